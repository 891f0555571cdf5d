"""The fake's Batch API on its own: files, validation, statuses by scaled time, listing."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from pipeline.fake import FakeConfig, profile, serve_in_thread


def line(custom_id: str, model: str = "gpt-4o-mini", url: str = "/v1/chat/completions") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": custom_id}], "seed": 1}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with (
        serve_in_thread(FakeConfig(batch_time_scale=0.0001)) as server,
        httpx.Client(base_url=server.base_url) as http,
    ):
        yield http


def submit(client: httpx.Client, content: bytes, endpoint: str = "/v1/chat/completions") -> dict:
    uploaded = client.post(
        "/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}
    ).json()
    return client.post(
        "/batches",
        json={
            "input_file_id": uploaded["id"],
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": {"job": "t"},
        },
    ).json()


def test_a_batch_goes_from_validating_to_completed(client: httpx.Client) -> None:
    batch = submit(client, line("a") + b"\n" + line("b"))
    assert (batch["status"], batch["metadata"]) == ("validating", {"job": "t"})
    time.sleep(0.45)
    done = client.get(f"/batches/{batch['id']}").json()
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    output = client.get(f"/files/{done['output_file_id']}/content").content.splitlines()
    assert sorted(orjson.loads(x)["custom_id"] for x in output) == ["a", "b"]
    assert done["error_file_id"] is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (line("a") + b"\n" + line("a"), "custom_id missing or not unique"),
        (line("a", url="/v1/embeddings"), "url /v1/chat/completions"),
        (b"{not json", "not JSON"),
    ],
)
def test_an_invalid_input_file_fails_the_batch(
    client: httpx.Client, content: bytes, problem: str
) -> None:
    batch = submit(client, content)
    assert batch["status"] == "failed"
    assert problem in batch["errors"]["data"][0]["message"]


def test_a_wrong_endpoint_is_refused(client: httpx.Client) -> None:
    answer = submit(client, line("a"), endpoint="/v1/completions")
    assert "endpoint must be /v1/chat/completions" in answer["error"]["message"]


def test_batches_list_newest_first_in_pages(client: httpx.Client) -> None:
    ids = [submit(client, line(str(i)))["id"] for i in range(3)]
    first = client.get("/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    rest = client.get("/batches", params={"limit": 2, "after": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == ids[:1]


def test_files_are_listed_and_deleted(client: httpx.Client) -> None:
    batch = submit(client, line("a"))
    files = client.get("/files", params={"purpose": "batch"}).json()["data"]
    assert [f["id"] for f in files] == [batch["input_file_id"]]
    assert client.delete(f"/files/{batch['input_file_id']}").json()["deleted"] is True
    assert client.get("/files").json()["data"] == []


def test_azure_lines_must_name_the_deployment() -> None:
    azure = profile("azure")
    with (
        serve_in_thread(FakeConfig(profile=azure)) as server,
        httpx.Client(base_url=server.base_url.split("/openai/")[0] + "/openai/v1") as client,
    ):
        client.params = httpx.QueryParams({"api-version": "2024-10-21"})
        wrong = submit(
            client, line("a", model="gpt-4o", url="/chat/completions"), "/chat/completions"
        )
        assert "must name the deployment gpt-4o-mini" in wrong["errors"]["data"][0]["message"]
        right = submit(client, line("a", url="/chat/completions"), "/chat/completions")
        assert right["status"] == "validating"
