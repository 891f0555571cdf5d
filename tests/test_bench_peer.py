"""The benchmark's peer (tests/bench/peer.py) and its inputs, against the loopback fake:
a comparison is only fair when the peer does the work it is credited with."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.fake import FakeConfig, serve_in_thread
from pipeline.fake.content import count_tokens
from tests.bench import peer
from tests.bench.inputs import WORDS_MAX, WORDS_MIN, review
from tests.helpers import REPO


def write_requests(path: Path, count: int, max_tokens: int = 40) -> Path:
    with path.open("w") as out:
        for i in range(count):
            body = {
                "model": "bench-model",
                "messages": [{"role": "user", "content": review(i)}],
                "max_tokens": max_tokens,
                "metadata": {"id": f"row-{i}"},
            }
            out.write(json.dumps(body) + "\n")
    return path


def run_peer(tmp_path: Path, url: str, count: int, *extra: str) -> list[list[Any]]:
    requests = write_requests(tmp_path / "requests.jsonl", count)
    save = tmp_path / "results.jsonl"
    argv = [
        "--requests_filepath", str(requests), "--save_filepath", str(save),
        "--request_url", f"{url}/chat/completions", "--max_requests_per_minute", "1000000",
        "--max_tokens_per_minute", "1000000000", "--logging_level", "40", *extra,
    ]  # fmt: skip
    assert peer.main(argv) == 0
    return [json.loads(line) for line in save.read_text().splitlines()]


def test_every_request_is_answered_once_through_faults(tmp_path: Path) -> None:
    config = FakeConfig(realistic=True, error_500_rate=0.2, drop_rate=0.1, fault_seed=3)
    with serve_in_thread(config) as server:
        lines = run_peer(tmp_path, server.base_url, 40, "--max_attempts", "12")
        received = server.stats.received
    ids = [line[2]["id"] for line in lines]
    assert sorted(ids) == sorted(f"row-{i}" for i in range(40))
    answers = [line[1] for line in lines]
    assert all("choices" in answer for answer in answers)
    assert received > 40  # the faults were retried
    assert all("metadata" not in line[0] for line in lines)


def test_a_rate_limit_error_pauses_dispatch_and_attempts_run_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer, "RATE_LIMIT_PAUSE_S", 0.3)
    with serve_in_thread(FakeConfig(rate_limit_rate=1.0)) as server:
        start = time.monotonic()
        [line] = run_peer(tmp_path, server.base_url, 1, "--max_attempts", "2")
        took = time.monotonic() - start
        assert server.stats.received == 2
    errors = line[1]
    assert isinstance(errors, list)
    assert len(errors) == 2
    assert "Rate limit" in errors[0]
    assert took >= 0.3


def test_requests_are_charged_their_estimated_prompt_and_max_tokens() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 40, "n": 2}
    # 2 for the reply, 4 a message, "user" 1 token, the content 100, 40 per choice
    assert peer.num_tokens_consumed_from_request(body, "chat/completions") == 2 + 4 + 1 + 100 + 80
    unset = {"messages": [{"role": "user", "content": "x" * 40}]}
    assert peer.num_tokens_consumed_from_request(unset, "chat/completions") == 2 + 4 + 1 + 10 + 15
    url = "http://127.0.0.1:1/v1/chat/completions"
    assert peer.api_endpoint_from_url(url) == "chat/completions"


def test_reviews_are_realistic_and_deterministic() -> None:
    texts = [review(i) for i in range(300)]
    assert texts == [review(i) for i in range(300)]
    words = [len(text.split()) for text in texts]
    assert min(words) >= WORDS_MIN
    assert max(words) <= WORDS_MAX + 22  # the last sentence may run over
    assert len(set(texts)) == len(texts)
    tokens = [count_tokens(text) for text in texts]
    assert 220 <= sum(tokens) / len(tokens) <= 480


def test_measure_runs_a_script_with_https_only_patterns_over_http(tmp_path: Path) -> None:
    script = tmp_path / "cookbook.py"
    script.write_text('import re\nprint(bool(re.search("^https://x", "http://x")))\n')
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.measure", "--report", str(report), str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == "True\n"
    assert script.read_text().count("^https://") == 1  # the original is left alone
    measured = json.loads(report.read_text())
    assert measured["exit"] == 0
    assert measured["max_rss_mb"] > 0
