"""A row's journey over a scripted sender, and the outcome functions: plain values, no network."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import BadRowError, InvalidJson, ServerError
from pipeline.records import ChatRequest, Ledger, PromptRow, Reply, RunStats, Usage
from pipeline.requests import RequestBuilder
from pipeline.results import DoneIndex, PartWriter, completion_key
from pipeline.runner import outcome
from pipeline.runner.journey import RowJourney
from pipeline.runner.outcome import Answer, Where
from pipeline.runner.prepare import RequestPreparer
from pipeline.runner.reuse import Reuse
from pipeline.spec import RequestSpec
from pipeline.structured import Extraction

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ROW = PromptRow(seq=3, id="r3", values={"text": "hello"}, keep={"k": 1})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


USAGE = Usage(10, 2, 12)


def reply(content: str = "ok", usage: Usage = USAGE) -> Reply:
    return Reply(content, "stop", "m-2026", 200, 5.0, usage=usage, response_id="c1")


class ScriptedSender:
    """Answers each request with the next scripted reply or error, as a sender would."""

    def __init__(self, *script: Reply | Exception) -> None:
        self.script = list(script)
        self.seeds: list[int] = []

    async def send(self, row_id: str, request: ChatRequest, ledger: Ledger) -> Reply:
        self.seeds.append(request.seed)
        ledger.sent()
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        ledger.answered(item.usage, 0.001)
        return item


def journey(
    sender: ScriptedSender,
    *,
    extraction: Extraction | None = None,
    reuse: Reuse | None = None,
    stats: RunStats | None = None,
    models: int = 1,
) -> RowJourney:
    spec = RequestSpec(model="m", template="Say: {text}", seed=7)
    builder = RequestBuilder(spec, prompt_column="text", messages_column=None)
    return RowJourney(
        prepare=RequestPreparer(builder, extraction),
        reuse=reuse,
        sender=sender,
        extraction=extraction,
        json_retries=1,
        models=models,
        default_model="m",
        source_name="in.parquet",
        stats=stats or RunStats(total=1),
    )


@pytest.mark.anyio
async def test_an_answered_row_carries_the_reply_and_the_ledger() -> None:
    done = await journey(ScriptedSender(reply())).process(ROW, 1, None)
    assert done is not None
    assert (done.seq, done.id, done.status, done.content, done.model) == (
        4,
        "r3",
        "ok",
        "ok",
        "m-2026",
    )
    assert (done.attempts, done.usage, done.cost_usd, done.keep) == (
        1,
        Usage(10, 2, 12),
        0.001,
        {"k": 1},
    )


@pytest.mark.anyio
async def test_a_failed_row_keeps_its_error_and_attempts() -> None:
    error = ServerError("HTTP 503: busy", http_status=503)
    done = await journey(ScriptedSender(error), models=2).process(ROW, 0, "m")
    assert done is not None
    assert (done.seq, done.status, done.error_type, done.http_status, done.attempts) == (
        6,
        "error",
        "server_error",
        503,
        1,
    )
    assert done.content is None
    assert done.usage == Usage()


@pytest.mark.anyio
async def test_a_row_that_cannot_become_a_request_is_an_error_row_sent_nowhere() -> None:
    sender = ScriptedSender()
    row = PromptRow(seq=0, id="r0", values={"text": None}, line=2)
    done = await journey(sender).process(row, 0, None)
    assert done is not None
    assert (done.status, done.error_type, done.attempts, done.model) == (
        "error",
        "bad_input",
        0,
        "m",
    )
    assert done.error_message is not None
    assert done.error_message.startswith("in.parquet: line 2:")
    assert sender.seeds == []


@pytest.mark.anyio
async def test_json_mode_asks_again_with_a_new_seed_and_adds_up_usage() -> None:
    extraction = Extraction("json_object")
    sender = ScriptedSender(reply("not json"), reply('{"a": 1}'))
    stats = RunStats(total=1)
    done = await journey(sender, extraction=extraction, stats=stats).process(ROW, 0, None)
    assert done is not None
    assert done.status == "ok"
    assert done.extra == {"parsed_json": '{"a":1}', "json_attempts": 2}
    assert len(set(sender.seeds)) == 2
    assert done.seed == sender.seeds[-1]
    assert done.usage == Usage(20, 4, 24)
    assert done.attempts == 2
    assert stats.json_reasks == 1


@pytest.mark.anyio
async def test_json_mode_gives_up_after_json_retries_keeping_the_content() -> None:
    sender = ScriptedSender(reply("nope"), reply("still not"))
    done = await journey(sender, extraction=Extraction("json_object")).process(ROW, 0, None)
    assert done is not None
    assert (done.status, done.error_type, done.content) == ("error", "invalid_json", "still not")
    assert done.extra == {"parsed_json": None, "json_attempts": 2}


@pytest.mark.anyio
async def test_a_result_an_earlier_run_has_is_reused_not_sent(tmp_path: Path) -> None:
    sender = ScriptedSender(reply())
    first = await journey(sender).process(ROW, 0, None)
    assert first is not None
    writer = PartWriter(tmp_path / "o.parquet", pa.schema([("k", pa.int64())]))
    writer.prepare()
    writer.write_part([first])
    stats = RunStats(total=1)
    index = DoneIndex.load(writer.earlier_results())
    assert (
        index.find(completion_key(ROW.id, str(first.request_hash)), retry_errors=False) is not None
    )
    again = journey(
        ScriptedSender(), reuse=Reuse(index, retry_errors=False, stats=stats), stats=stats
    )
    assert await again.process(ROW, 0, None) is None
    assert (stats.reused, stats.ok) == (1, 1)


def test_outcome_functions_fill_the_row_from_typed_parts() -> None:
    where = Where(ROW, 9, T0)
    request = ChatRequest(b"{}", 42, "hash", estimated_prompt_tokens=3, max_tokens=None, model="m")
    ledger = Ledger(attempts=2, usage=Usage(1, 1, 2), cost_usd=0.5, possibly_billed=1)
    ok = outcome.answered(where, request, reply(), ledger, request_hash="first", answer=Answer())
    assert (ok.seq, ok.seed, ok.request_hash, ok.attempts, ok.possibly_billed_attempts) == (
        9,
        42,
        "first",
        2,
        1,
    )
    assert ok.usage == Usage(1, 1, 2)
    assert ok.started_at == T0
    assert ok.finished_at >= T0
    unusable = outcome.answered(
        where,
        request,
        reply(),
        ledger,
        request_hash="h",
        answer=Answer({"parsed_json": None}, InvalidJson("x")),
    )
    assert (unusable.status, unusable.error_type, unusable.error_message) == (
        "error",
        "invalid_json",
        "x",
    )
    bad = outcome.unbuildable(where, "m", "in.jsonl: line 4", BadRowError("prompt is null"), {})
    assert (bad.error_message, bad.attempts, bad.finished_at) == (
        "in.jsonl: line 4: prompt is null",
        0,
        T0,
    )
