"""/v1/vector_stores end to end: real HTTP, the official `openai` client, bodies validated against the OpenAI spec."""

from __future__ import annotations

import time

import openai
import pytest

from tailorlm.config import Settings
from tests.server_harness import live_server
from tests.spec import validate

HOURS = b"""# Opening hours

The Lindenfeld library opens at nine in the morning on weekdays and at ten on Saturdays.
It is closed on Sundays and on public holidays.
"""
CARDS = b"""# Library cards

A library card costs twelve euros a year. Students under eighteen get their card for free.
Lost cards are replaced at the front desk for two euros.
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(Settings(home=tmp_path_factory.mktemp("vs-home"), threads=2)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def wait_done(client, store_id: str, file_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        f = client.vector_stores.files.retrieve(file_id, vector_store_id=store_id)
        if f.status != "in_progress" or time.monotonic() > deadline:
            return f
        time.sleep(0.2)


def test_store_files_search_end_to_end(server, client):
    hours = client.files.create(file=("hours.md", HOURS), purpose="assistants")
    cards = client.files.create(file=("cards.md", CARDS), purpose="assistants")

    store = client.vector_stores.create(name="library", metadata={"team": "front-desk"})
    assert (store.object, store.name, store.metadata, store.file_counts.total) == ("vector_store", "library",
                                                                                    {"team": "front-desk"}, 0)
    with server.http() as http:
        validate(http.get(f"/v1/vector_stores/{store.id}").json(), "VectorStoreObject")

    added = client.vector_stores.files.create(vector_store_id=store.id, file_id=hours.id,
                                              attributes={"topic": "hours"})
    assert added.status in ("in_progress", "completed") and added.vector_store_id == store.id
    client.vector_stores.files.create(vector_store_id=store.id, file_id=cards.id, attributes={"topic": "cards"})
    for f in (hours, cards):
        done = wait_done(client, store.id, f.id)
        assert done.status == "completed", done.last_error
    with server.http() as http:
        validate(http.get(f"/v1/vector_stores/{store.id}/files/{hours.id}").json(), "VectorStoreFileObject")
        listed = http.get(f"/v1/vector_stores/{store.id}/files", params={"order": "asc"}).json()
        validate(listed, "ListVectorStoreFilesResponse")
    assert [f["id"] for f in listed["data"]] == [hours.id, cards.id]
    assert listed["data"][0]["attributes"] == {"topic": "hours"}

    got = client.vector_stores.retrieve(store.id)
    assert (got.status, got.file_counts.completed, got.file_counts.total) == ("completed", 2, 2)
    assert got.usage_bytes > 0

    page = client.vector_stores.search(store.id, query="When does the library open on Saturday?", max_num_results=2)
    assert page.data and page.data[0].filename == "hours.md" and page.data[0].file_id == hours.id
    assert "Saturdays" in page.data[0].content[0].text and 0 <= page.data[0].score <= 1
    with server.http() as http:
        raw = http.post(f"/v1/vector_stores/{store.id}/search",
                        json={"query": "library card price", "rewrite_query": True}).json()
    validate(raw, "VectorStoreSearchResultsPage")
    assert raw["search_query"] == ["library card price"] and raw["data"][0]["filename"] == "cards.md"

    filtered = client.vector_stores.search(store.id, query="When does the library open?",
                                           filters={"type": "eq", "key": "topic", "value": "cards"})
    assert filtered.data and {d.file_id for d in filtered.data} == {cards.id}

    renamed = client.vector_stores.update(store.id, name="library-2", metadata={"team": "all"})
    assert (renamed.name, renamed.metadata) == ("library-2", {"team": "all"})

    deleted = client.vector_stores.files.delete(hours.id, vector_store_id=store.id)
    assert deleted.deleted and deleted.id == hours.id
    assert [f.id for f in client.vector_stores.files.list(store.id)] == [cards.id]
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.retrieve(hours.id, vector_store_id=store.id)

    with server.http() as http:
        gone = http.delete(f"/v1/vector_stores/{store.id}").json()
        validate(gone, "DeleteVectorStoreResponse")
    assert gone == {"id": store.id, "object": "vector_store.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(store.id)


def test_create_with_files_list_pages_and_failures(server, client):
    good = client.files.create(file=("cards.md", CARDS), purpose="assistants")
    bad = client.files.create(file=("broken.pdf", b"this is not a pdf at all"), purpose="assistants")
    store = client.vector_stores.create(name="with-files", file_ids=[good.id, bad.id])
    assert store.file_counts.total == 2
    assert wait_done(client, store.id, good.id).status == "completed"
    failed = wait_done(client, store.id, bad.id)
    assert failed.status == "failed" and failed.last_error and failed.last_error.message
    with server.http() as http:
        validate(http.get(f"/v1/vector_stores/{store.id}/files/{bad.id}").json(), "VectorStoreFileObject")
        only_failed = http.get(f"/v1/vector_stores/{store.id}/files", params={"filter": "failed"}).json()
    assert [f["id"] for f in only_failed["data"]] == [bad.id]
    counts = client.vector_stores.retrieve(store.id).file_counts
    assert (counts.completed, counts.failed, counts.total) == (1, 1, 2)

    others = [client.vector_stores.create(name=f"page-{i}").id for i in range(2)]
    with server.http() as http:
        first = http.get("/v1/vector_stores", params={"limit": 2}).json()
        validate(first, "ListVectorStoresResponse")
        assert [s["id"] for s in first["data"]] == others[::-1] and first["has_more"] is True
        rest = http.get("/v1/vector_stores", params={"limit": 2, "after": first["last_id"]}).json()
        assert rest["data"][0]["id"] == store.id
        before = http.get("/v1/vector_stores", params={"limit": 1, "before": others[0]}).json()
        assert [s["id"] for s in before["data"]] == [others[1]]


def test_unknown_store_file_and_bad_bodies(server, client):
    for call in (lambda: client.vector_stores.retrieve("vs_nope"),
                 lambda: client.vector_stores.search("vs_nope", query="x"),
                 lambda: client.vector_stores.files.list("vs_nope")):
        with pytest.raises(openai.NotFoundError):
            call()
    store = client.vector_stores.create(name="errors")
    with server.http() as http:
        res = http.post(f"/v1/vector_stores/{store.id}/files", json={"file_id": "file-nope"})
        assert res.status_code == 404
        validate(res.json(), "ErrorResponse")
        res = http.post(f"/v1/vector_stores/{store.id}/search", json={"query": "x", "max_num_results": 99})
        assert res.status_code == 400 and res.json()["error"]["param"] == "max_num_results"
        res = http.post("/v1/vector_stores", json={"name": "errors"})
        assert res.status_code == 409
        validate(res.json(), "ErrorResponse")
