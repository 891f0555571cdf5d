"""The error tree.

Two families never mix: errors of the *user* (a bad job file, bad input, an
unwritable output), which stop a run before anything is sent, and errors of
*one request attempt*, which are data: they are retried or become error rows.

    PipelineError
    ├── UserError                 exit code 2, nothing sent
    │   ├── JobError              the job file or a CLI override is wrong
    │   ├── InputError            the input file is missing, unreadable or lacks a column
    │   └── OutputError           the output path cannot be written
    ├── LockedError               another run holds the output (pipeline.lock; exit 75)
    ├── BadRowError               one input row cannot become a request (bad_input)
    ├── AnswerError               a JSON-mode answer arrived but cannot be used; re-asked
    │   │                         up to ``json_retries`` times, apart from transport retries
    │   ├── InvalidJson           not JSON (or not a JSON object)         invalid_json
    │   ├── SchemaMismatch        JSON that breaks the schema, or a value
    │   │                         that does not fit its Arrow column       schema_mismatch
    │   └── Truncated             finish_reason "length"                   truncated
    └── AttemptError              one HTTP attempt failed; carries ``error_type``
        ├── RetryableError        the request never completed, or the server asked to wait
        │   ├── RateLimited       429                         rate_limited
        │   ├── ServerError       5xx, 409                    server_error
        │   ├── RequestTimeout    408, client-side timeout    timeout
        │   ├── ConnectionFailed  refused, reset, dropped     connection
        │   │   ├── NotSent       never left the client (refused, reset by a socket
        │   │   │                 the server had closed): resent at once, not billed
        │   │   └── StaleConnection  a reused connection closed at once, before any
        │   │                     answer: resent at once, possibly billed all the same
        │   └── BadResponse       200 with an unusable body   bad_response
        └── FatalError            the server said no; sending again cannot help
            ├── BadRequest        400, 422, other 4xx         bad_request
            ├── AuthFailed        401, 403                    auth
            ├── NotFound          404                         not_found
            └── QuotaExhausted    429 insufficient_quota: no credit left  insufficient_quota

Retry policy keys on ``RetryableError`` alone: a bug is never retried. An
``AnswerError`` is never a transport retry: the runner re-asks with a new seed.
"""

from __future__ import annotations

from pipeline.records import RateLimitInfo


class PipelineError(Exception):
    """Root of every error the pipeline raises on purpose."""


class UserError(PipelineError):
    """A mistake of the user's: reported in one line, exit code 2."""


class JobError(UserError):
    """The job file (or a CLI override) is invalid."""


class InputError(UserError):
    """The input cannot be read or lacks something the job needs."""


class OutputError(UserError):
    """The output cannot be written."""


class BadRowError(PipelineError):
    """One input row cannot be turned into a request."""

    error_type = "bad_input"


class AnswerError(PipelineError):
    """A JSON-mode answer arrived (HTTP 200) but its content cannot be used."""

    error_type = "unknown"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidJson(AnswerError):
    error_type = "invalid_json"


class SchemaMismatch(AnswerError):
    error_type = "schema_mismatch"


class Truncated(AnswerError):
    error_type = "truncated"


class AttemptError(PipelineError):
    """One HTTP attempt failed."""

    error_type = "unknown"

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        retry_after_s: float | None = None,
        rate_limits: RateLimitInfo | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.retry_after_s = retry_after_s
        self.rate_limits = rate_limits


class RetryableError(AttemptError):
    """Worth sending again after a wait."""


class RateLimited(RetryableError):
    error_type = "rate_limited"


class ServerError(RetryableError):
    error_type = "server_error"


class RequestTimeout(RetryableError):
    error_type = "timeout"


class ConnectionFailed(RetryableError):
    error_type = "connection"


class NotSent(ConnectionFailed):
    """The request never left the client: the connection was refused, or the server had
    already closed the kept-alive connection it was written to."""


class StaleConnection(ConnectionFailed):
    """A reused kept-alive connection closed at once, before any answer: most likely one
    the server had already closed, but it may have read the request (possibly billed)."""


class BadResponse(RetryableError):
    error_type = "bad_response"


class FatalError(AttemptError):
    """Sending the same request again cannot succeed."""


class BadRequest(FatalError):
    error_type = "bad_request"


class AuthFailed(FatalError):
    error_type = "auth"


class NotFound(FatalError):
    error_type = "not_found"


class QuotaExhausted(FatalError):
    """A 429 whose code is ``insufficient_quota``: the account has no credit left, so
    waiting cannot help (OpenAI answers it so); the run stops like on a refused key."""

    error_type = "insufficient_quota"


ERROR_TYPES: tuple[str, ...] = (
    "rate_limited",
    "server_error",
    "timeout",
    "connection",
    "bad_response",
    "bad_request",
    "auth",
    "not_found",
    "bad_input",
    "invalid_json",
    "schema_mismatch",
    "truncated",
    "insufficient_quota",
)
"""Every stable ``error_type`` an output row can carry."""
