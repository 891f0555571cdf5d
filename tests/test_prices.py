"""Tests of the price table: the packaged file, overrides, name resolution, unknown models."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pipeline.budget import budget_price
from pipeline.errors import JobError
from pipeline.prices import PriceTable, packaged_entries, read_price_file
from pipeline.spec import PriceSpec, parse_job
from tests.test_spec import minimal_job


def table(**extra: dict[str, float]) -> PriceTable:
    return PriceTable.for_job({name: PriceSpec(**spec) for name, spec in extra.items()})


def test_packaged_table_ships_in_the_package_with_date_and_source() -> None:
    assert resources.files("pipeline").joinpath("data/prices.json").is_file()
    entries = packaged_entries()
    assert len(entries) >= 30
    for name, spec in entries.items():
        assert spec.as_of, name
        assert (spec.source or "").startswith("https://"), name
        assert spec.cached_input is not None, name
        assert spec.cached_input <= spec.input, name
    for name in (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "o3-mini",
        "o4-mini",
        "gpt-5",
        "claude-sonnet-4",
        "claude-3-5-haiku",
    ):
        assert name in entries


@pytest.mark.parametrize(
    ("model", "priced_as"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai/gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("GPT-4.1-Mini", "gpt-4.1-mini"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # an old snapshot with its own price
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("anthropic/claude-3.5-sonnet", "claude-3-5-sonnet"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("o3-mini-high", "o3-mini"),
        ("gpt-5-chat-latest", "gpt-5"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("mistral-large-2411", "mistral-large"),
    ],
)
def test_names_resolve(model: str, priced_as: str) -> None:
    price = table().resolve(model)
    assert price is not None
    assert price.model == priced_as


@pytest.mark.parametrize("model", ["mystery-model", "gpt-4", "gpt-4ox", "ft:gpt-4o-mini:acme::x1"])
def test_unknown_names_have_no_price(model: str) -> None:
    assert table().resolve(model) is None


def test_unknown_model_gives_one_warning_and_no_crash() -> None:
    prices = table()
    with capture_logs() as logs:
        for _ in range(3):
            assert prices.lookup("mystery-model", "mystery-model") is None
        assert prices.lookup("other-mystery") is None
    unknown = [e for e in logs if e["event"] == "price.unknown_model"]
    assert [e["model"] for e in unknown] == ["mystery-model", "other-mystery"]
    assert unknown[0]["log_level"] == "warning"


def test_reported_model_is_priced_else_the_requested_one() -> None:
    prices = table()
    price = prices.lookup("gpt-4o", "gpt-4o-mini")
    assert price is not None
    assert price.model == "gpt-4o"
    with capture_logs() as logs:
        fallback = prices.lookup("my-azure-deployment", "gpt-4o-mini")
        assert prices.lookup(None, "gpt-4o-mini") is not None
    assert fallback is not None
    assert fallback.model == "gpt-4o-mini"
    assert [e["event"] for e in logs] == ["price.fallback"]


def test_job_prices_override_and_extend_the_packaged_table() -> None:
    prices = table(
        **{
            "gpt-4o-mini": {"input": 1.0, "output": 2.0},
            "my-model": {"input": 0.5, "cached_input": 0.25, "output": 1.5},
        }
    )
    mini = prices.resolve("gpt-4o-mini-2024-07-18")
    assert mini is not None
    assert (mini.input, mini.cached_input, mini.output) == (1.0, 1.0, 2.0)
    mine = prices.resolve("router/my-model")
    assert mine is not None
    assert (mine.input, mine.cached_input, mine.output) == (0.5, 0.25, 1.5)


def test_price_file_overrides_the_job(tmp_path: Path) -> None:
    toml = tmp_path / "prices.toml"
    toml.write_text('"my-model" = { input = 3, output = 4 }\n')
    data = {
        "models": {
            "gpt-4o": {
                "input": 9.0,
                "output": 9.5,
                "source": "https://example.com",
                "as_of": "2026-01",
            }
        }
    }
    (tmp_path / "prices.json").write_text(json.dumps(data))
    job_prices = {"my-model": PriceSpec(input=1.0, output=1.0)}

    prices = PriceTable.for_job(job_prices, toml)
    mine = prices.resolve("my-model")
    assert mine is not None
    assert (mine.input, mine.output) == (3.0, 4.0)
    gpt4o = PriceTable.for_job(job_prices, tmp_path / "prices.json").resolve("gpt-4o")
    assert gpt4o is not None
    assert gpt4o.output == 9.5
    assert gpt4o.source == "https://example.com"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "p.toml",
            '"m" = { input = -1, output = 1 }\n',
            "m.input: Input should be greater than or equal to 0",
        ),
        ("p.toml", '"m" = { input = 1 }\n', "m.output: Field required"),
        ("p.toml", '"m" = { input = 1, output = 1, cost = 3 }\n', "m.cost: unknown key"),
        (
            "p.toml",
            '"m" = { input = "1", output = 1 }\n',
            "m.input: Input should be a valid number",
        ),
        ("p.toml", "m = [", "not valid TOML"),
        ("p.json", "{", "not valid JSON"),
    ],
)
def test_bad_price_files_name_the_key(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(JobError, match="^" + str(path).replace(".", r"\.") + ": ") as info:
        read_price_file(path)
    assert message in str(info.value)


def test_missing_price_file(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="cannot read price file"):
        read_price_file(tmp_path / "nope.toml")


def test_job_prices_table_is_validated() -> None:
    job = minimal_job()
    job["prices"] = {"my-model": {"input": 0.5, "cached_input": 0.25, "output": 1.5}}
    assert parse_job(job).prices["my-model"].cached_input == 0.25
    job["prices"] = {"my-model": {"input": 0.5, "output": 1.5, "outptu": 1.5}}
    with pytest.raises(JobError, match=r"\[prices\] my-model.outptu: unknown key"):
        parse_job(job)
    job["prices"] = {"my-model": {"input": -0.5, "output": 1.5}}
    with pytest.raises(
        JobError, match=r"\[prices\] my-model.input: Input should be greater than or equal to 0"
    ):
        parse_job(job)


def test_a_budget_needs_a_price() -> None:
    prices = table()
    assert budget_price(None, "mystery-model", prices) is None
    price = budget_price(5.0, "gpt-4o-mini", prices)
    assert price is not None
    assert price.model == "gpt-4o-mini"
    with pytest.raises(
        JobError, match=r"^\[limits\] max_cost_usd: model 'mystery-model' has no known price"
    ):
        budget_price(5.0, "mystery-model", prices)
