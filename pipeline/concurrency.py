"""``concurrency = "auto"``: an in-flight limit that finds and holds a server's capacity.

Two parts. ``GradientController`` is pure logic (no I/O, no clock of its own): it takes
one sample per finished attempt (when it was sent, its latency, its completion tokens,
what came of it) and now and then answers with a new limit. ``AdaptiveLimit`` is the
semaphore the sender holds around each attempt, whose size the controller moves.

How the controller decides, in the style of TCP Vegas and Netflix's gradient limiter:

* **Latency is normalised by tokens.** Each answer's latency is divided by the lowest
  seen for answers of comparable length (completion tokens within a fourth of a
  doubling, about 19%), so a long answer is slow, not a sign of queueing. The median of these
  ratios over a window is the window's *latency ratio* (1.0: as fast as ever seen).
* **Windows.** A window collects answers to requests sent after it opened, at least
  ``max(8, limit)`` of them (about two latencies), and then decides once.
* **Load.** Each answer carries the mean number of requests on the wire during its
  flight (itself included), not the number when it was sent: a limit's worth of
  requests sent in one tick (all slots freed by answers that arrived together, as from
  a server of steady latency) are all on the wire together, but counted as each is sent
  they see 1, 2, ..., limit: about half the limit, never saturated.
* **Grow** while the latency ratio stays within ``TOLERANCE``: doubling at first (slow
  start), then by a tenth. Only when the window was *saturated* (the requests on the
  wire reached the limit): a run held back by rate limits or out of rows does not grow
  a limit it does not use.
* **Past the tolerance**, the controller asks whether throughput still rises with the
  limit. By Little's law throughput is ``in-flight / latency``, so between two windows
  its elasticity is ``1 - dlog(latency ratio) / dlog(in-flight)``: about 1 while the
  server batches more requests at little cost, 0 once extra requests only queue.
  Elasticity at least ``MIN_ELASTICITY``: keep growing; below: shrink by
  ``TOLERANCE / ratio`` (between halving and a tenth). A ratio past twice the
  tolerance shrinks at once (a capacity drop).
* **Cut at once** on a 503, a timeout or a dropped connection (to half) and on a 429
  (to three quarters), once per window: answers to requests sent before the last cut
  do not cut again.

The limit stays within ``[minimum, maximum]`` always. Rate limits are the
``RateLimiter``'s business: the limit only bounds what is in flight, so a run under
``concurrency = "auto"`` never sends faster than its configured (or the server's)
rate limits allow. The lowest latencies are never forgotten: a server that becomes
slower for good (longer prompts) is held a little below its new capacity.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import anyio

from pipeline.errors import AttemptError, ConnectionFailed, RateLimited, RequestTimeout, ServerError

Clock = Callable[[], float]

TOLERANCE = 1.5
"""Latency ratio up to which the server is taken to be unloaded (batching costs a little)."""
MIN_ELASTICITY = 0.3
"""Throughput gain per unit of limit gain (relative) below which growing is not worth it."""
INITIAL_LIMIT = 4
GROWTH = 0.1
OVERLOAD_CUT = 0.5
THROTTLE_CUT = 0.75
MAX_SHRINK = 0.5
MIN_SHRINK = 0.9
MIN_WINDOW = 16
BUCKETS_PER_DOUBLING = 4
"""Answers whose completion tokens are within 2 ** (1 / 4) of each other are comparable."""
SATURATED = 0.8
"""A window is saturated when its requests had this share of the limit in flight (on average
over their flights)."""


class Signal(StrEnum):
    """What an attempt says about the server's load."""

    OK = "ok"
    """Answered: its latency counts."""
    OVERLOADED = "overloaded"
    """503 (or another 5xx), a timeout, a dropped connection: past capacity."""
    THROTTLED = "throttled"
    """429: too many requests."""
    NEUTRAL = "neutral"
    """An error that says nothing of load (400, 401, 404, a bad body)."""


def signal_of(error: AttemptError | None) -> Signal:
    """The load signal of an attempt that ended with ``error`` (None: answered)."""
    if error is None:
        return Signal.OK
    if isinstance(error, RateLimited):
        return Signal.THROTTLED
    if isinstance(error, ServerError | RequestTimeout | ConnectionFailed):
        return Signal.OVERLOADED
    return Signal.NEUTRAL


@dataclass(frozen=True, slots=True)
class Change:
    """The limit moved from ``previous`` to ``limit``, for ``reason``."""

    previous: int
    limit: int
    reason: str
    latency_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class _Window:
    """What a finished window measured: mean requests in flight, median latency ratio."""

    load: float
    ratio: float


class GradientController:
    """Samples in, a new limit out now and then (see the module docstring)."""

    def __init__(self, minimum: int, maximum: int, initial: int | None = None) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {minimum} and {maximum}")
        self.minimum = minimum
        self.maximum = maximum
        start = INITIAL_LIMIT if initial is None else initial
        self._limit = float(min(maximum, max(minimum, start)))
        self._slow_start = True
        self._baseline: dict[int, float] = {}
        self._opened = -math.inf
        self._cut_at = -math.inf
        self._ratios: list[float] = []
        self._load = 0.0
        self._previous: _Window | None = None

    @property
    def limit(self) -> int:
        """The current in-flight limit."""
        return round(self._limit)

    def sample(
        self,
        now: float,
        sent_at: float,
        latency_s: float,
        tokens: int,
        signal: Signal,
        in_flight: float,
    ) -> Change | None:
        """One finished attempt: sent at ``sent_at``, ``latency_s`` long, ``tokens`` completion
        tokens, with ``in_flight`` requests on the wire on average during its flight (itself
        included)."""
        if signal is Signal.OK:
            return self._answered(now, sent_at, latency_s, tokens, in_flight)
        if signal is Signal.NEUTRAL or sent_at < self._cut_at:
            return None
        factor = OVERLOAD_CUT if signal is Signal.OVERLOADED else THROTTLE_CUT
        self._cut_at = now
        self._slow_start = False
        self._previous = None
        return self._move(now, self._limit * factor, str(signal))

    def _answered(
        self, now: float, sent_at: float, latency_s: float, tokens: int, in_flight: float
    ) -> Change | None:
        latency_s = max(latency_s, 1e-6)
        bucket = int(BUCKETS_PER_DOUBLING * math.log2(max(1, tokens)))
        base = self._baseline.get(bucket)
        if base is None or latency_s < base:
            base = self._baseline[bucket] = latency_s
        if sent_at < self._opened:
            return None
        self._ratios.append(latency_s / base)
        self._load += in_flight
        if len(self._ratios) < max(MIN_WINDOW, 2 * self.limit):
            return None
        return self._decide(now)

    def _decide(self, now: float) -> Change | None:
        """The end of a window: grow, hold or shrink."""
        window = _Window(self._load / len(self._ratios), statistics.median(self._ratios))
        previous, self._previous = self._previous, window
        saturated = window.load >= SATURATED * self.limit
        if window.ratio <= TOLERANCE:
            if not saturated:
                return self._move(now, self._limit, "")
            if self._slow_start:
                return self._move(now, self._limit * 2, "latency near the lowest seen")
            step = max(1.0, self._limit * GROWTH)
            return self._move(now, self._limit + step, "latency near the lowest seen")
        self._slow_start = False
        shrink = self._limit * min(MIN_SHRINK, max(MAX_SHRINK, TOLERANCE / window.ratio))
        if window.ratio > 2 * TOLERANCE:
            return self._move(now, shrink, "queueing: latency far above the lowest seen", window)
        elasticity = _elasticity(previous, window)
        if elasticity is None:  # nothing to compare with: step down, and compare then
            step = max(1.0, self._limit * GROWTH)
            return self._move(now, self._limit - step, "probing below", window)
        if elasticity >= MIN_ELASTICITY:
            grown = self._limit + max(1.0, self._limit * GROWTH) if saturated else self._limit
            return self._move(now, grown, "throughput still rises with the limit", window)
        return self._move(now, shrink, "latency rises with no throughput gain", window)

    def _move(
        self, now: float, limit: float, reason: str, window: _Window | None = None
    ) -> Change | None:
        """Set the limit (within bounds), open a new window; the change, if the limit moved."""
        previous = self.limit
        self._limit = min(float(self.maximum), max(float(self.minimum), limit))
        self._opened = now
        self._ratios = []
        self._load = 0.0
        if self.limit == previous:
            return None
        ratio = round(window.ratio, 3) if window is not None else None
        return Change(previous, self.limit, reason, ratio)


def _elasticity(previous: _Window | None, window: _Window) -> float | None:
    """Relative throughput gain per relative load gain between two windows (None: the load
    hardly changed, so there is nothing to compare)."""
    if previous is None or previous.load <= 0 or window.load <= 0:
        return None
    load_change = math.log(window.load / previous.load)
    if abs(load_change) < 0.05:
        return None
    return 1.0 - math.log(window.ratio / previous.ratio) / load_change


class Sent(NamedTuple):
    """An attempt put on the wire (``AdaptiveLimit.sending``'s answer)."""

    at: float
    """When it was sent."""
    on_wire: int
    """Requests on the wire then, itself included."""
    wire_s: float
    """The limit's running total of request-seconds on the wire, then."""


class AdaptiveLimit:
    """A semaphore whose size the controller moves; shared by all workers of a run.

    Waiters are served first come, first served. A lower limit takes effect as
    attempts finish (nothing in flight is cancelled); a higher one wakes waiters at once.
    ``on_change`` hears of every change of the limit (the sender logs and counts it).
    """

    def __init__(
        self,
        controller: GradientController,
        *,
        clock: Clock = time.monotonic,
        on_change: Callable[[Change], None] | None = None,
    ) -> None:
        self.controller = controller
        self._clock = clock
        self._on_change = on_change
        self._held = 0
        self._on_wire = 0
        self._wire_s = 0.0
        """Request-seconds on the wire so far, counted up to ``_counted_at``."""
        self._counted_at = 0.0
        self._waiters: deque[anyio.Event] = deque()

    @property
    def limit(self) -> int:
        """The current in-flight limit."""
        return self.controller.limit

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    async def acquire(self) -> None:
        """Wait for a slot."""
        if self._held < self.limit and not self._waiters:
            self._held += 1
            return
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():  # granted while being cancelled: pass the slot on
                self.release()
            else:
                self._waiters.remove(event)
            raise

    def release(self) -> None:
        """Give a slot back; wake waiters while there is room."""
        self._held -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._held < self.limit:
            self._held += 1
            self._waiters.popleft().set()

    def _count(self, now: float) -> None:
        """Add the request-seconds on the wire since the last count (before it changes)."""
        self._wire_s += self._on_wire * (now - self._counted_at)
        self._counted_at = now

    def sending(self) -> Sent:
        """An attempt goes on the wire now."""
        now = self._clock()
        self._count(now)
        self._on_wire += 1
        return Sent(now, self._on_wire, self._wire_s)

    def abandoned(self) -> None:
        """An attempt on the wire was cancelled: it says nothing of the server."""
        self._count(self._clock())
        self._on_wire -= 1

    def finished(self, sent: Sent, tokens: int | None, error: AttemptError | None) -> None:
        """The attempt ``sent`` (``sending()``'s answer) ended: feed the controller, with the
        requests on the wire on average during its flight (itself included)."""
        now = self._clock()
        self._count(now)
        self._on_wire -= 1
        latency_s = now - sent.at
        in_flight = (
            max(1.0, (self._wire_s - sent.wire_s) / latency_s) if latency_s > 0 else sent.on_wire
        )
        change = self.controller.sample(
            now, sent.at, latency_s, tokens or 0, signal_of(error), in_flight
        )
        if change is not None:
            self._wake()
            if self._on_change is not None:
                self._on_change(change)
