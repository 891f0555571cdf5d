"""A continuous-batching server's capacity: slots, a queue, per-token time growing with the batch.

``slots`` requests decode together; the rest wait in a first-come queue. A request in
the batch produces its completion tokens one after another, each taking
``token_s * (1 + batch_slowdown * (batch - 1))`` where ``batch`` is the number decoding
at that moment (re-read every few tokens), so throughput rises with the batch while
latency grows a little, and past ``slots`` only the queue (and the latency) grows.
With ``queue_limit`` requests waiting, a newcomer is refused (the server answers 503,
or hangs, as configured). ``schedule`` changes ``slots`` mid-run: ``((10.0, 4),)`` means
4 slots from 10 s after the first request on.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

_MIN_SLEEP_S = 0.02
"""Tokens are decoded in steps of at least this long (fewer timers, same total time)."""


def parse_schedule(text: str | None) -> tuple[tuple[float, int], ...]:
    """``"10:4,30:8"`` -> ``((10.0, 4), (30.0, 8))``: slots from so many seconds on."""
    if not text:
        return ()
    steps = []
    for part in text.split(","):
        at, sep, slots = part.strip().partition(":")
        try:
            step = (float(at), int(slots))
        except ValueError:
            step = None
        if not sep or step is None or step[0] < 0 or step[1] < 1:
            raise ValueError(
                f"slots_schedule: {part.strip()!r} is not SECONDS:SLOTS (e.g. 10:4,30:8)"
            )
        steps.append(step)
    return tuple(sorted(steps))


class Capacity:
    """The batch and the queue of one fake server (one event loop)."""

    def __init__(
        self,
        slots: int,
        token_s: float,
        batch_slowdown: float,
        queue_limit: int | None,
        schedule: tuple[tuple[float, int], ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slots = slots
        self._token_s = token_s
        self._slowdown = batch_slowdown
        self._queue_limit = queue_limit
        self._schedule = schedule
        self._clock = clock
        self._started: float | None = None
        self.batch = 0
        self.queue: deque[asyncio.Future[None]] = deque()
        self.peak_batch = 0
        self.peak_queue = 0

    @property
    def slots(self) -> int:
        """The slots now (the schedule's latest step already reached)."""
        slots = self._slots
        if self._schedule and self._started is not None:
            elapsed = self._clock() - self._started
            for at, step in self._schedule:
                if elapsed >= at:
                    slots = step
        return slots

    async def decode(self, tokens: int) -> bool:
        """Wait for a slot and decode ``tokens`` tokens; False (at once): the queue is full."""
        if self._started is None:
            self._started = self._clock()
        if self.batch >= self.slots or self.queue:
            if self._queue_limit is not None and len(self.queue) >= self._queue_limit:
                return False
            await self._wait_for_slot()
        else:
            self.batch += 1
        self.peak_batch = max(self.peak_batch, self.batch)
        try:
            await self._run(tokens)
        finally:
            self.batch -= 1
            self._admit()
        return True

    async def _wait_for_slot(self) -> None:
        turn = asyncio.get_running_loop().create_future()
        self.queue.append(turn)
        self.peak_queue = max(self.peak_queue, len(self.queue))
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.batch -= 1  # admitted while being cancelled: give the slot on
                self._admit()
            else:
                self.queue.remove(turn)
            raise

    async def _run(self, tokens: int) -> None:
        left = max(1, tokens)
        while left > 0:
            per_token = self._token_s * (1 + self._slowdown * (self.batch - 1))
            step = min(left, max(1, math.ceil(_MIN_SLEEP_S / per_token))) if per_token > 0 else left
            await asyncio.sleep(step * per_token)
            left -= step
            self._admit()

    def _admit(self) -> None:
        """Let queued requests in while there are free slots (the schedule may have added some)."""
        slots = self.slots
        while self.queue and self.batch < slots:
            turn = self.queue.popleft()
            if not turn.done():
                self.batch += 1
                turn.set_result(None)
