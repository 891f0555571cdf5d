"""One run at a time per output: an exclusive ``flock`` on ``<output>.lock``.

The kernel drops the lock when its process dies, however it dies, so a lock left
behind by a crashed run is simply taken over; the file itself stays (removing it
would let two runs lock two different files of the same name).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from pipeline.errors import PipelineError


class LockedError(PipelineError):
    """Another live run holds the output."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """Held for the whole run; ``previous`` describes a dead holder whose lock was taken over."""

    def __init__(self, output: Path) -> None:
        self.path = output.with_name(output.name + ".lock")
        self.previous: dict[str, object] | None = None
        self._fd: int | None = None

    def _holder(self, fd: int) -> dict[str, object]:
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise LockedError(
                f"{self.path.with_suffix('')}: another run is writing this output"
                f" (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started_at', '?')})"
            ) from None
        previous = self._holder(fd)
        pid = previous.get("pid")
        if (
            isinstance(pid, int)
            and previous.get("host") == socket.gethostname()
            and not _pid_alive(pid)
        ):
            self.previous = previous
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(UTC).isoformat(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
