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
def settings(tmp_path_factory):
    return Settings(home=tmp_path_factory.mktemp("vs-home"), threads=2, preload=False)


@pytest.fixture(scope="module")
def server(settings):
    with live_server(settings) as live:
        yield live


def chunks_in(settings: Settings, store_id: str) -> int:
    from tailorlm import db

    return db.connect(settings.db_path).execute("SELECT count(*) FROM kb_chunks WHERE kb_id = ?",
                                                (store_id,)).fetchone()[0]


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
        res = http.post(f"/v1/vector_stores/{store.id}/search", json={"query": ["seeds"] * 10_000})
        assert res.status_code == 400 and res.json()["error"]["param"] == "query"  # bounded, nothing embedded
        assert "between 1 and 16 queries" in res.json()["error"]["message"]
        res = http.post("/v1/vector_stores", json={"name": "errors"})
        assert res.status_code == 409
        validate(res.json(), "ErrorResponse")


LONG = ("# Seed saving\n\n" + " ".join(
    f"Step {i}: dry the pods of variety {i} for {i % 9 + 3} days in a paper bag, then label the jar." for i in range(60))
    + "\n").encode()


def test_static_chunking_is_honoured_and_checked(server, client, settings):
    long = client.files.create(file=("long.md", LONG), purpose="assistants")
    store = client.vector_stores.create(name="chunking")
    default = wait_done(client, store.id, client.vector_stores.files.create(
        vector_store_id=store.id, file_id=long.id).id)
    assert default.chunking_strategy.type == "static"
    assert default.chunking_strategy.static.max_chunk_size_tokens == 200
    with server.http() as http:
        default_chunks = http.get("/v1/vector_stores/" + store.id).json()
    small = client.vector_stores.create(name="chunking-small")
    f = client.vector_stores.files.create(vector_store_id=small.id, file_id=long.id, chunking_strategy={
        "type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 20}})
    f = wait_done(client, small.id, f.id)
    assert f.status == "completed"
    assert (f.chunking_strategy.static.max_chunk_size_tokens, f.chunking_strategy.static.chunk_overlap_tokens) == (100, 20)
    with server.http() as http:
        validate(http.get(f"/v1/vector_stores/{small.id}/files/{f.id}").json(), "VectorStoreFileObject")
    assert chunks_in(settings, small.id) > chunks_in(settings, store.id) > 0  # smaller chunks, more of them
    assert default_chunks["file_counts"]["completed"] == 1
    with server.http() as http:  # chunks the embedding model cannot take whole: a 400 now, not a failed file later
        res = http.post(f"/v1/vector_stores/{small.id}/files", json={"file_id": long.id, "chunking_strategy": {
            "type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}})
        assert res.status_code == 400 and res.json()["error"]["param"] == "chunking_strategy"
        assert "at most" in res.json()["error"]["message"]
        res = http.post("/v1/vector_stores", json={"name": "bad-overlap", "file_ids": [long.id], "chunking_strategy": {
            "type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 80}}})
        assert res.status_code == 400
        assert "bad-overlap" not in [s["name"] for s in http.get("/v1/vector_stores").json()["data"]]


def test_expiry_is_reported_and_an_expired_store_is_refused(server, client, settings):
    store = client.vector_stores.create(name="expiring", expires_after={"anchor": "last_active_at", "days": 2})
    assert store.expires_after.days == 2 and store.expires_at == store.last_active_at + 2 * 86400
    with server.http() as http:
        validate(http.get(f"/v1/vector_stores/{store.id}").json(), "VectorStoreObject")
        from tailorlm import db

        conn = db.connect(settings.db_path)  # three days without use
        conn.execute("UPDATE kb SET last_active_at = last_active_at - 3 * 86400 WHERE id = ?", (store.id,))
        body = http.get(f"/v1/vector_stores/{store.id}").json()
        assert body["status"] == "expired"
        res = http.post(f"/v1/vector_stores/{store.id}/search", json={"query": "hours"})
        assert res.status_code == 400 and "expired" in res.json()["error"]["message"]
        res = http.post("/v1/vector_stores", json={"name": "bad-expiry",
                                                   "expires_after": {"anchor": "created_at", "days": 2}})
        assert res.status_code == 400


def test_file_batches_and_file_content(server, client):
    hours = client.files.create(file=("hours.md", HOURS), purpose="assistants")
    cards = client.files.create(file=("cards.md", CARDS), purpose="assistants")
    store = client.vector_stores.create(name="batches")
    batch = client.vector_stores.file_batches.create_and_poll(vector_store_id=store.id, file_ids=[hours.id, cards.id],
                                                              attributes={"source": "handbook"})
    assert (batch.object, batch.status, batch.file_counts.completed, batch.file_counts.total) == (
        "vector_store.files_batch", "completed", 2, 2)
    with server.http() as http:
        validate(http.get(f"/v1/vector_stores/{store.id}/file_batches/{batch.id}").json(), "VectorStoreFileBatchObject")
        listed = http.get(f"/v1/vector_stores/{store.id}/file_batches/{batch.id}/files").json()
        validate(listed, "ListVectorStoreFilesResponse")
        content = http.get(f"/v1/vector_stores/{store.id}/files/{hours.id}/content").json()
        validate(content, "VectorStoreFileContentResponse")
    assert {f["id"] for f in listed["data"]} == {hours.id, cards.id}
    assert all(f["attributes"] == {"source": "handbook"} for f in listed["data"])
    assert "nine in the morning" in " ".join(c["text"] for c in content["data"])
    hits = client.vector_stores.search(store.id, query="How much is a library card?",
                                       filters={"type": "eq", "key": "source", "value": "handbook"})
    assert hits.data[0].file_id == cards.id

    with server.http() as http:  # bad bodies create nothing
        res = http.post(f"/v1/vector_stores/{store.id}/file_batches", json={"file_ids": [hours.id, "file-nope"]})
        assert res.status_code == 404
        res = http.post(f"/v1/vector_stores/{store.id}/file_batches",
                        json={"file_ids": [hours.id], "files": [{"file_id": hours.id}]})
        assert res.status_code == 400
        res = http.get(f"/v1/vector_stores/{store.id}/file_batches/vsfb_nope")
        assert res.status_code == 404
        validate(res.json(), "ErrorResponse")

    per_file = client.vector_stores.file_batches.create(vector_store_id=store.id, files=[
        {"file_id": hours.id, "attributes": {"topic": "hours"}}])
    cancelled = client.vector_stores.file_batches.cancel(per_file.id, vector_store_id=store.id)
    assert cancelled.status in ("cancelled", "completed")  # completed if it finished before the cancel
    with server.http() as http:
        validate(http.post(f"/v1/vector_stores/{store.id}/file_batches/{per_file.id}/cancel").json(),
                 "VectorStoreFileBatchObject")


def test_cancelling_a_batch_stops_the_files_still_waiting(server, client):
    long = client.files.create(file=("long-again.md", LONG + b"\nMore steps follow.\n"), purpose="assistants")
    late = client.files.create(file=("late.md", b"# Late\n\nThe greenhouse key hangs behind the blue door.\n"),
                               purpose="assistants")
    store = client.vector_stores.create(name="cancelling")
    batch = client.vector_stores.file_batches.create(vector_store_id=store.id, file_ids=[long.id, late.id])
    batch = client.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id)
    late_file = wait_done(client, store.id, late.id)
    assert late_file.status == "cancelled"  # it was queued behind the long file, so it never started
    deadline = time.monotonic() + 60
    while client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id).status == "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id).status == "cancelled"
    assert all(h.file_id != late.id for h in client.vector_stores.search(store.id, query="greenhouse key").data)


def test_files_added_before_a_kill_9_are_ingested_at_the_next_start(tmp_path):
    """The server dies (SIGKILL) while a long file is being ingested and another waits its turn; the next server
    on the same home ingests both: each file once, its chunks all there, searchable. Nothing added is lost."""
    import sqlite3

    from tests.server_harness import kill9, served_process

    home = tmp_path / "home"
    long_doc = b"".join(b"# Section %d\n\n" % i + b"Seed saving step %d: dry the pods in a paper bag. " % i * 20 + b"\n\n"
                        for i in range(100))
    with served_process(home) as (proc, live):
        client = live.client()
        store = client.vector_stores.create(name="crash")
        big = client.files.create(file=("big.md", long_doc), purpose="assistants")
        small = client.files.create(file=("hours.md", HOURS), purpose="assistants")
        client.vector_stores.files.create(vector_store_id=store.id, file_id=big.id)
        client.vector_stores.files.create(vector_store_id=store.id, file_id=small.id)
        time.sleep(0.5)  # the big file's embedding has begun; the small one waits behind it
        kill9(proc)
    with sqlite3.connect(home / "tailor.db") as db:
        queued = {f for (f,) in db.execute("SELECT file_id FROM kb_ingest_queue WHERE kb_id = ?", (store.id,))}
        done = {f for (f,) in db.execute("SELECT id FROM kb_files WHERE kb_id = ?", (store.id,))}
    assert small.id in queued and small.id not in done  # it had not been ingested when the server died
    with served_process(home) as (proc, live):
        client = live.client()
        for file in (big, small):
            assert wait_done(client, store.id, file.id).status == "completed"
        listed = [f.id for f in client.vector_stores.files.list(vector_store_id=store.id)]
        assert sorted(listed) == sorted([big.id, small.id])  # each once
        hits = client.vector_stores.search(store.id, query="When does the library open on Saturdays?")
        assert any(h.file_id == small.id for h in hits.data)
    with sqlite3.connect(home / "tailor.db") as db:
        assert db.execute("SELECT count(*) FROM kb_ingest_queue").fetchone()[0] == 0
        per_file = dict(db.execute("SELECT id, chunks FROM kb_files WHERE kb_id = ?", (store.id,)).fetchall())
        counted = dict(db.execute("SELECT file_id, count(*) FROM kb_chunks WHERE kb_id = ? GROUP BY file_id",
                                  (store.id,)).fetchall())
    assert per_file == counted  # the counts the store reports are the chunks it holds
