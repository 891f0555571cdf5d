"""The fake server's capacity model: slots, the queue, batch slowdown, overflow, schedule."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from pipeline.fake import FakeConfig, serve_in_thread
from pipeline.fake.capacity import Capacity, parse_schedule
from pipeline.fake.cli import _parser
from pipeline.spec import FakeSpec


async def _timed(capacity: Capacity, tokens: int) -> tuple[bool, float]:
    start = time.monotonic()
    admitted = await capacity.decode(tokens)
    return admitted, time.monotonic() - start


def _decode_all(capacity: Capacity, count: int, tokens: int) -> list[tuple[bool, float]]:
    async def main() -> list[tuple[bool, float]]:
        return list(await asyncio.gather(*(_timed(capacity, tokens) for _ in range(count))))

    return asyncio.run(main())


def test_requests_past_the_slots_queue_behind_them() -> None:
    capacity = Capacity(slots=2, token_s=0.01, batch_slowdown=0.0, queue_limit=None)
    results = _decode_all(capacity, 4, tokens=10)
    took = sorted(t for _, t in results)
    assert all(admitted for admitted, _ in results)
    assert took[0] >= 0.09  # lower bounds only: a loaded machine makes sleeps longer
    assert took[3] >= 0.19
    assert took[3] >= 1.5 * took[0] or took[0] > 0.15
    assert (capacity.peak_batch, capacity.peak_queue) == (2, 2)
    assert (capacity.batch, len(capacity.queue)) == (0, 0)


def test_per_token_time_grows_with_the_batch() -> None:
    alone = _decode_all(Capacity(4, 0.01, 1.0, None), 1, tokens=10)[0][1]
    together = max(t for _, t in _decode_all(Capacity(4, 0.01, 1.0, None), 4, tokens=10))
    assert alone >= 0.09
    assert together >= 0.36  # x (1 + 1.0 * 3)


def test_past_the_queue_limit_newcomers_are_refused_at_once() -> None:
    capacity = Capacity(slots=1, token_s=0.01, batch_slowdown=0.0, queue_limit=1)
    results = _decode_all(capacity, 3, tokens=10)
    refused = [t for admitted, t in results if not admitted]
    assert len(refused) == 1
    assert refused[0] < 0.02


def test_the_schedule_changes_the_slots_from_the_first_request_on() -> None:
    now = [100.0]
    capacity = Capacity(8, 0.01, 0.0, None, parse_schedule("5:2, 10:6"), clock=lambda: now[0])
    assert capacity.slots == 8
    asyncio.run(capacity.decode(1))  # the first request starts the schedule's clock
    now[0] += 4.9
    assert capacity.slots == 8
    now[0] += 0.2
    assert capacity.slots == 2
    now[0] += 5
    assert capacity.slots == 6


@pytest.mark.parametrize("text", ["5", "a:2", "5:0", "-1:2", "5:2,x"])
def test_a_bad_schedule_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="slots_schedule"):
        parse_schedule(text)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"slots": 0}, "slots must be >= 1"),
        ({"slots": 2, "queue_overflow": "drop"}, "queue_overflow must be one of 503, hang"),
        ({"slots_schedule": "1:2"}, "slots_schedule needs slots"),
        ({"slots": 2, "slots_schedule": "soon"}, "slots_schedule"),
        ({"slots": 2, "batch_slowdown": -1.0}, "batch_slowdown must be >= 0"),
    ],
)
def test_capacity_settings_are_checked(settings: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        FakeConfig(**settings)


CAPACITY_OPTIONS = (
    "slots",
    "token_ms",
    "batch_slowdown",
    "queue_limit",
    "queue_overflow",
    "slots_schedule",
)


def test_flags_and_job_keys_reach_the_config() -> None:
    flags = "--slots 8 --token-ms 5 --batch-slowdown 0.2 --queue-limit 4 --queue-overflow hang"
    args = _parser().parse_args([*flags.split(), "--slots-schedule", "10:4"])
    from_flags = FakeConfig.from_options(**{name: getattr(args, name) for name in CAPACITY_OPTIONS})
    table = {
        "slots": 8,
        "token_ms": 5.0,
        "batch_slowdown": 0.2,
        "queue_limit": 4,
        "queue_overflow": "hang",
        "slots_schedule": "10:4",
    }
    from_job = FakeConfig.from_options(**FakeSpec.model_validate(table).model_dump())
    for config in (from_flags, from_job):
        assert (config.slots, config.token_s, config.batch_slowdown) == (8, 0.005, 0.2)
        assert (config.queue_limit, config.queue_overflow) == (4, "hang")
        assert config.slots_schedule == "10:4"


async def _post_many(base_url: str, count: int) -> list[int]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        responses = await asyncio.gather(
            *(client.post("/chat/completions", json=body) for _ in range(count))
        )
    return sorted(r.status_code for r in responses)


def test_the_server_answers_503_past_the_queue_limit() -> None:
    config = FakeConfig(slots=1, token_s=0.02, queue_limit=1)
    with serve_in_thread(config) as server:
        statuses = asyncio.run(_post_many(server.base_url, 4))
    assert statuses == [200, 200, 503, 503]
    assert server.stats.overflowed == 2
    assert server.stats.peak_in_flight >= 3
    assert server.capacity is not None
    assert (server.capacity.peak_batch, server.capacity.peak_queue) == (1, 1)


def test_the_server_can_hang_past_the_queue_limit_instead() -> None:
    config = FakeConfig(slots=1, token_s=0.02, queue_limit=0, queue_overflow="hang", hang_s=0.3)
    with serve_in_thread(config) as server:
        started = time.monotonic()
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}

        async def two() -> list[BaseException | httpx.Response]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
                return await asyncio.gather(
                    *(client.post("/chat/completions", json=body) for _ in range(2)),
                    return_exceptions=True,
                )

        results = asyncio.run(two())
    ok = [r for r in results if isinstance(r, httpx.Response) and r.status_code == 200]
    failed = [r for r in results if not isinstance(r, httpx.Response)]
    assert len(ok) == 1
    assert len(failed) == 1  # closed unanswered once hang_s passed
    assert time.monotonic() - started >= 0.3
    assert (server.stats.overflowed, server.stats.hung) == (1, 1)
