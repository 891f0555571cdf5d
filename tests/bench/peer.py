"""A peer to benchmark the pipeline against: the design of the OpenAI cookbook's
``api_request_parallel_processor.py``, re-implemented for benchmarking.

This is NOT the cookbook's code: it is our own script written after that script's
documented design, so the benchmark has the fastest common peer to compare with when the
real script is not at hand (set ``PEER_SCRIPT=/path/to/api_request_parallel_processor.py``
to benchmark the real one: this script takes the same command line, so one code path runs
either). The design:

* read a JSONL file of request bodies (a ``metadata`` field is popped and written back
  with the result), lazily, one line each time the main loop needs a request;
* one aiohttp ``ClientSession`` (its default connector: at most 100 connections, and
  aiohttp's default timeout, which the benchmark's wrapper sets) and one asyncio task
  per request;
* a request capacity and a token capacity, each starting at a full minute's quota and
  refilled in the main loop at ``limit / 60`` per second; a request is dispatched when
  both have room for it (1 request, its estimated prompt tokens plus ``max_tokens``
  times ``n``), and the loop sleeps 1 ms when it cannot dispatch. The cookbook's loop
  sleeps 1 ms on every turn, which caps it near 1,000 dispatches a second and keeps few
  tasks waiting; ``PEER_SLEEP_EVERY_TURN=1`` does that too. Not sleeping after a dispatch
  (the default) makes this peer at least as fast as the cookbook's;
* an error answer (a body with ``error``, a 429) or an exception re-queues the request
  while attempts are left (``--max_attempts`` in all); after a rate-limit error (any 429,
  or an error message saying "rate limit") nothing is dispatched for 15 s;
* every result is appended to ``--save_filepath`` as a JSON line ``[request, response]``
  (``[request, [errors]]`` when it failed), with its metadata as a third item.

Prompt tokens are estimated as four characters a token (plus the chat format's few tokens
per message), since tiktoken is not installed here; ``--token_encoding_name`` is accepted
and ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

RATE_LIMIT_PAUSE_S = 15
LOOP_SLEEP_S = 0.001
SLEEP_EVERY_TURN = os.environ.get("PEER_SLEEP_EVERY_TURN", "") not in ("", "0")
_CHARS_PER_TOKEN = 4


@dataclass
class StatusTracker:
    """Counts of the run, and when the last rate-limit error came."""

    tasks_started: int = 0
    tasks_in_progress: int = 0
    tasks_succeeded: int = 0
    tasks_failed: int = 0
    rate_limit_errors: int = 0
    api_errors: int = 0
    other_errors: int = 0
    time_of_last_rate_limit_error: float = 0.0


@dataclass
class APIRequest:
    """One request body, its token cost, the attempts it has left and its errors so far."""

    task_id: int
    request_json: dict[str, Any]
    token_consumption: int
    attempts_left: int
    metadata: Any
    result: list[Any] = field(default_factory=list)

    async def call_api(
        self,
        session: aiohttp.ClientSession,
        request_url: str,
        request_header: dict[str, str],
        retry_queue: asyncio.Queue[APIRequest],
        save_filepath: str,
        status_tracker: StatusTracker,
    ) -> None:
        """Send the request once; save its answer, or re-queue it (or save its errors)."""
        logging.info("Starting request #%d", self.task_id)
        error: Any = None
        response: Any = None
        try:
            async with session.post(
                url=request_url, headers=request_header, json=self.request_json
            ) as answer:
                status = answer.status
                response = await answer.json()
            if "error" in response:
                logging.warning("Request %d failed with error %s", self.task_id, response["error"])
                status_tracker.api_errors += 1
                error = response
                message = str(response["error"].get("message", "")).lower()
                if status == 429 or "rate limit" in message:
                    status_tracker.time_of_last_rate_limit_error = time.time()
                    status_tracker.rate_limit_errors += 1
                    status_tracker.api_errors -= 1
        except Exception as exc:
            logging.warning("Request %d failed with Exception %r", self.task_id, exc)
            status_tracker.other_errors += 1
            error = exc
        if error is not None:
            self.result.append(error)
            if self.attempts_left:
                retry_queue.put_nowait(self)
                return
            logging.error("Request %d failed after all attempts", self.task_id)
            errors = [str(e) for e in self.result]
            _save(self.request_json, errors, self.metadata, save_filepath)
            status_tracker.tasks_in_progress -= 1
            status_tracker.tasks_failed += 1
            return
        _save(self.request_json, response, self.metadata, save_filepath)
        status_tracker.tasks_in_progress -= 1
        status_tracker.tasks_succeeded += 1


def _save(request_json: dict[str, Any], outcome: Any, metadata: Any, path: str) -> None:
    data = [request_json, outcome, metadata] if metadata is not None else [request_json, outcome]
    append_to_jsonl(data, path)


def append_to_jsonl(data: Any, filename: str) -> None:
    """Append one JSON line."""
    with open(filename, "a") as out:
        out.write(json.dumps(data) + "\n")


def api_endpoint_from_url(request_url: str) -> str:
    """The endpoint part of the URL ("chat/completions")."""
    match = re.search(r"^https?://[^/]+/v\d+/(.+)$", request_url) or re.search(
        r"^https?://[^/]+(?:/.*?)?/((?:chat/)?completions|embeddings)$", request_url
    )
    return match[1] if match else "chat/completions"


def estimate_tokens(text: str) -> int:
    """Tokens of a text, estimated (no tokenizer installed)."""
    return max(1, round(len(text) / _CHARS_PER_TOKEN))


def num_tokens_consumed_from_request(request_json: dict[str, Any], api_endpoint: str) -> int:
    """Tokens a request is charged against the limit: the prompt, estimated, plus
    ``max_tokens`` (15 when unset) for each of its ``n`` choices."""
    if api_endpoint.endswith("completions"):
        completion_tokens = request_json.get("n", 1) * request_json.get("max_tokens", 15)
        if "messages" not in request_json:
            prompt = request_json.get("prompt", "")
            texts = prompt if isinstance(prompt, list) else [prompt]
            return sum(estimate_tokens(str(t)) for t in texts) + completion_tokens
        tokens = 2
        for message in request_json["messages"]:
            tokens += 4
            for key, value in message.items():
                tokens += estimate_tokens(str(value))
                if key == "name":
                    tokens -= 1
        return tokens + completion_tokens
    texts = request_json.get("input", "")
    texts = texts if isinstance(texts, list) else [texts]
    return sum(estimate_tokens(str(t)) for t in texts)


def task_ids() -> Iterator[int]:
    """0, 1, 2, ..."""
    task_id = 0
    while True:
        yield task_id
        task_id += 1


async def process_api_requests_from_file(
    requests_filepath: str,
    save_filepath: str,
    request_url: str,
    api_key: str,
    max_requests_per_minute: float,
    max_tokens_per_minute: float,
    max_attempts: int,
    logging_level: int,
) -> StatusTracker:
    """Send every request of the file under the limits; return the run's counts."""
    logging.basicConfig(level=logging_level)
    api_endpoint = api_endpoint_from_url(request_url)
    request_header = {"Authorization": f"Bearer {api_key}"}
    if "/deployments" in request_url:
        request_header = {"api-key": api_key}
    retry_queue: asyncio.Queue[APIRequest] = asyncio.Queue()
    ids = task_ids()
    status = StatusTracker()
    next_request: APIRequest | None = None
    request_capacity, token_capacity = max_requests_per_minute, max_tokens_per_minute
    last_update = time.time()
    file_not_finished = True
    with open(requests_filepath) as lines:  # noqa: ASYNC230 (the design: read lazily in the loop)
        async with aiohttp.ClientSession() as session:
            while True:
                if next_request is None:
                    if not retry_queue.empty():
                        next_request = retry_queue.get_nowait()
                    elif file_not_finished:
                        line = next(lines, None)
                        if line is None:
                            file_not_finished = False
                        else:
                            request_json = json.loads(line)
                            next_request = APIRequest(
                                task_id=next(ids),
                                request_json=request_json,
                                token_consumption=num_tokens_consumed_from_request(
                                    request_json, api_endpoint
                                ),
                                attempts_left=max_attempts,
                                metadata=request_json.pop("metadata", None),
                            )
                            status.tasks_started += 1
                            status.tasks_in_progress += 1
                now = time.time()
                elapsed, last_update = now - last_update, now
                request_capacity = min(
                    request_capacity + max_requests_per_minute * elapsed / 60,
                    max_requests_per_minute,
                )
                token_capacity = min(
                    token_capacity + max_tokens_per_minute * elapsed / 60, max_tokens_per_minute
                )
                dispatched = False
                if (
                    next_request is not None
                    and request_capacity >= 1
                    and token_capacity >= next_request.token_consumption
                ):
                    request_capacity -= 1
                    token_capacity -= next_request.token_consumption
                    next_request.attempts_left -= 1
                    asyncio.create_task(  # noqa: RUF006 (the design: tasks run unawaited)
                        next_request.call_api(
                            session, request_url, request_header, retry_queue, save_filepath, status
                        )
                    )
                    next_request, dispatched = None, True
                if status.tasks_in_progress == 0:
                    break
                await asyncio.sleep(0 if dispatched and not SLEEP_EVERY_TURN else LOOP_SLEEP_S)
                since_rate_limit = time.time() - status.time_of_last_rate_limit_error
                if since_rate_limit < RATE_LIMIT_PAUSE_S:
                    await asyncio.sleep(RATE_LIMIT_PAUSE_S - since_rate_limit)
                    logging.warning(
                        "Pausing to cool down until %s",
                        time.ctime(status.time_of_last_rate_limit_error + RATE_LIMIT_PAUSE_S),
                    )
    logging.info("Parallel processing complete. Results saved to %s", save_filepath)
    if status.tasks_failed:
        logging.warning(
            "%d / %d requests failed. Errors logged to %s.",
            status.tasks_failed,
            status.tasks_started,
            save_filepath,
        )
    if status.rate_limit_errors:
        logging.warning("%d rate limit errors received.", status.rate_limit_errors)
    return status


def main(argv: list[str] | None = None) -> int:
    """The cookbook script's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests_filepath", required=True)
    parser.add_argument("--save_filepath", default=None)
    parser.add_argument("--request_url", default="https://api.openai.com/v1/embeddings")
    parser.add_argument("--api_key", default=os.getenv("OPENAI_API_KEY"))
    parser.add_argument("--max_requests_per_minute", type=int, default=3_000 * 0.5)
    parser.add_argument("--max_tokens_per_minute", type=int, default=250_000 * 0.5)
    parser.add_argument("--token_encoding_name", default="cl100k_base")
    parser.add_argument("--max_attempts", type=int, default=5)
    parser.add_argument("--logging_level", type=int, default=logging.INFO)
    args = parser.parse_args(argv)
    save = args.save_filepath or args.requests_filepath.replace(".jsonl", "_results.jsonl")
    asyncio.run(
        process_api_requests_from_file(
            requests_filepath=args.requests_filepath,
            save_filepath=save,
            request_url=args.request_url,
            api_key=args.api_key or "",
            max_requests_per_minute=float(args.max_requests_per_minute),
            max_tokens_per_minute=float(args.max_tokens_per_minute),
            max_attempts=int(args.max_attempts),
            logging_level=int(args.logging_level),
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
