"""The exit codes of ``pipeline`` commands, one name each.

Their meanings are in the README ("Exit codes") and ``pipeline.runner.lifecycle``; the
numbers live here, at the bottom of the layers, so the CLI can map errors to codes
without importing the runner (``pipeline --help`` stays fast).
"""

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_TOO_MANY_ERRORS = 3
EXIT_ABORTED = 4
EXIT_WRITE_FAILED = 5
EXIT_BUDGET = 6
EXIT_PENDING = 7
EXIT_INPUT_FAILED = 8
EXIT_SHARDS_MISSING = 9
"""``pipeline merge``: a shard has not finished (or never ran); nothing was written."""
EXIT_LOCKED = 75
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
