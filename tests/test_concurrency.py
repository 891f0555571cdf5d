"""The auto concurrency controller, driven by synthetic latencies on a virtual clock,
and the adaptive limit (a semaphore whose size moves)."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.concurrency import (
    AdaptiveLimit,
    Change,
    GradientController,
    Signal,
    signal_of,
)
from pipeline.errors import (
    BadRequest,
    ConnectionFailed,
    RateLimited,
    RequestTimeout,
    ServerError,
)


@dataclass
class Batching:
    """A continuous-batching server in closed form: ``slots`` decode together, per-token time
    grows by ``slowdown`` per extra request, requests past the slots queue (latency x N/slots)."""

    slots: int
    slowdown: float = 0.1
    token_s: float = 0.01
    noise: float = 0.05
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def latency(self, in_flight: int, tokens: int) -> float:
        batch = min(in_flight, self.slots)
        per_token = self.token_s * (1 + self.slowdown * (batch - 1))
        queueing = max(1.0, in_flight / self.slots)
        return tokens * per_token * queueing * (1 + self.rng.uniform(-self.noise, self.noise))

    def throughput(self, in_flight: int) -> float:
        """Requests per second of 40 tokens each at ``in_flight`` (no noise)."""
        batch = min(in_flight, self.slots)
        return batch / (40 * self.token_s * (1 + self.slowdown * (batch - 1)))


@dataclass
class Simulation:
    """A closed loop on a virtual clock: the run keeps ``limit`` requests in flight."""

    controller: GradientController
    server: Batching
    now: float = 0.0
    demand: int | None = None
    """At most this many requests in flight (a run held back by something else)."""
    changes: list[tuple[float, Change]] = field(default_factory=list)
    limits: list[tuple[float, int]] = field(default_factory=list)
    _flight: list[tuple[float, int, float, int, int]] = field(default_factory=list)
    _seq: int = 0

    def run_until(self, end: float) -> None:
        while self.now < end:
            wanted = self.controller.limit
            if self.demand is not None:
                wanted = min(wanted, self.demand)
            while len(self._flight) < wanted:
                self._seq += 1
                tokens = 20 + self._seq % 41  # 20..60 tokens
                n = len(self._flight) + 1
                done = self.now + self.server.latency(n, tokens)
                heapq.heappush(self._flight, (done, self._seq, self.now, n, tokens))
            done, _, sent_at, n, tokens = heapq.heappop(self._flight)
            self.now = done
            change = self.controller.sample(done, sent_at, done - sent_at, tokens, Signal.OK, n)
            if change is not None:
                self.changes.append((done, change))
            self.limits.append((done, self.controller.limit))

    def limits_between(self, start: float, end: float) -> list[int]:
        return [limit for at, limit in self.limits if start <= at < end]


def test_it_converges_near_the_slots_of_a_batching_server() -> None:
    sim = Simulation(GradientController(1, 256), Batching(slots=8))
    sim.run_until(120.0)
    held = sim.limits_between(60.0, 120.0)
    assert min(held) >= 6, held
    assert max(held) <= 11, held
    server = sim.server
    mean = sum(server.throughput(limit) for limit in held) / len(held)
    best = max(server.throughput(n) for n in range(1, 64))
    assert mean >= 0.9 * best


def test_it_follows_a_capacity_drop_within_seconds() -> None:
    sim = Simulation(GradientController(1, 256), Batching(slots=8))
    sim.run_until(60.0)
    sim.server.slots = 4
    sim.run_until(120.0)
    after = sim.limits_between(70.0, 120.0)
    assert max(after) <= 7
    assert sum(after) / len(after) <= 6.5
    assert min(after) >= 2
    sim.server.slots = 8
    sim.run_until(200.0)
    assert max(sim.limits_between(150.0, 200.0)) >= 8


def test_it_grows_to_the_maximum_when_latency_never_grows() -> None:
    sim = Simulation(GradientController(2, 40), Batching(slots=1000, slowdown=0.0))
    sim.run_until(60.0)
    assert sim.controller.limit == 40
    assert sim.limits_between(0.0, 60.0)[0] == 4  # starts at 4, doubles while fast


def test_it_does_not_grow_a_limit_it_does_not_use() -> None:
    sim = Simulation(GradientController(1, 256), Batching(slots=1000), demand=3)
    sim.run_until(30.0)
    assert sim.controller.limit == 4


def test_it_keeps_growing_while_throughput_rises_despite_higher_latency() -> None:
    """Per-token time doubling over the batch is batching, not queueing: keep the slots busy."""
    sim = Simulation(GradientController(1, 256), Batching(slots=16, slowdown=0.06))
    sim.run_until(120.0)
    held = sim.limits_between(60.0, 120.0)
    assert sum(held) / len(held) >= 12


@pytest.mark.parametrize(
    ("signal", "after"), [(Signal.OVERLOADED, 8), (Signal.THROTTLED, 12), (Signal.NEUTRAL, 16)]
)
def test_overload_cuts_at_once_and_once_per_window(signal: Signal, after: int) -> None:
    controller = GradientController(1, 256, initial=16)
    change = controller.sample(10.0, 9.0, 1.0, 10, signal, 16)
    assert controller.limit == after
    assert (change is None) == (after == 16)
    # answers to requests sent before the cut do not cut again
    assert controller.sample(10.5, 9.5, 1.0, 10, signal, 16) is None
    assert controller.limit == after
    if signal is not Signal.NEUTRAL:
        controller.sample(11.0, 10.5, 0.5, 10, signal, 8)
        assert controller.limit < after


def test_cuts_stop_at_the_minimum() -> None:
    controller = GradientController(3, 8, initial=4)
    for t in range(10):
        controller.sample(float(t + 1), float(t) + 0.5, 0.5, 10, Signal.OVERLOADED, 4)
    assert controller.limit == 3


@settings(max_examples=60, deadline=None)
@given(
    bounds=st.tuples(st.integers(1, 20), st.integers(0, 40)),
    samples=st.lists(
        st.tuples(
            st.floats(0.001, 30.0),
            st.integers(0, 500),
            st.sampled_from(list(Signal)),
            st.integers(1, 300),
        ),
        max_size=300,
    ),
)
def test_the_limit_stays_within_its_bounds(
    bounds: tuple[int, int], samples: list[tuple[float, int, Signal, int]]
) -> None:
    low, extra = bounds
    controller = GradientController(low, low + extra)
    now = 0.0
    for latency, tokens, signal, in_flight in samples:
        now += 0.1
        controller.sample(now + latency, now, latency, tokens, signal, in_flight)
        assert low <= controller.limit <= low + extra


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="minimum <= maximum"):
        GradientController(5, 4)


@pytest.mark.parametrize(
    ("error", "signal"),
    [
        (None, Signal.OK),
        (RateLimited("429"), Signal.THROTTLED),
        (ServerError("503"), Signal.OVERLOADED),
        (RequestTimeout("timeout"), Signal.OVERLOADED),
        (ConnectionFailed("reset"), Signal.OVERLOADED),
        (BadRequest("400"), Signal.NEUTRAL),
    ],
)
def test_signal_of_an_attempt(error: Exception | None, signal: Signal) -> None:
    assert signal_of(error) is signal  # type: ignore[arg-type]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_adaptive_limit_admits_up_to_its_limit_and_wakes_waiters_on_growth() -> None:
    clock = [0.0]
    changes: list[Change] = []
    limit = AdaptiveLimit(
        GradientController(1, 64, initial=2), clock=lambda: clock[0], on_change=changes.append
    )
    entered: list[int] = []
    release = anyio.Event()

    async def holder(i: int) -> None:
        async with limit:
            entered.append(i)
            await release.wait()

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(holder, i)
        await anyio.wait_all_tasks_blocked()
        assert entered == [0, 1]
        # fast answers with the limit in use: a window of 16 doubles the limit (slow start)
        for _ in range(8):
            sent = [limit.sending(), limit.sending()]
            clock[0] += 0.1
            for one in sent:
                limit.finished(one, 10, None)
        assert limit.limit == 4
        await anyio.wait_all_tasks_blocked()
        assert entered == [0, 1, 2, 3]
        assert changes == [Change(2, 4, "latency near the lowest seen")]
        release.set()
    assert entered == list(range(6))


def test_requests_sent_together_count_as_all_on_the_wire() -> None:
    # a limit's worth sent in one tick and answered together (a server of steady latency):
    # counted when sent they would see 1, 2, 3, 4 on the wire, half the limit on average
    clock = [0.0]
    limit = AdaptiveLimit(GradientController(1, 64, initial=4), clock=lambda: clock[0])
    for _ in range(4):
        sent = [limit.sending() for _ in range(4)]
        clock[0] += 0.05
        for one in sent:
            limit.finished(one, 10, None)
    assert limit.limit == 8


def test_requests_sent_one_after_another_do_not_saturate_the_limit() -> None:
    clock = [0.0]
    limit = AdaptiveLimit(GradientController(1, 64, initial=4), clock=lambda: clock[0])
    for _ in range(32):
        sent = limit.sending()
        clock[0] += 0.05
        limit.finished(sent, 10, None)
        clock[0] += 0.01
    assert limit.limit == 4


@pytest.mark.anyio
async def test_a_cancelled_waiter_gives_its_place_up() -> None:
    limit = AdaptiveLimit(GradientController(1, 4, initial=1))
    await limit.acquire()
    with anyio.move_on_after(0.01):
        await limit.acquire()
    limit.release()
    with anyio.fail_after(1):
        await limit.acquire()
    limit.release()
