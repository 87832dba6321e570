"""/v1/files end to end: real HTTP, the official `openai` client, bodies validated against the OpenAI spec."""

from __future__ import annotations

import json

import openai
import pytest

from tailorlm.config import Settings
from tests.server_harness import live_server
from tests.spec import validate

UPLOAD_LIMIT = 64 * 1024
BODY_LIMIT = 4096  # far below UPLOAD_LIMIT: the global body limit must not apply to uploads
TRAIN = b"".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                          {"role": "assistant", "content": "hello"}]}).encode() + b"\n"
                 for i in range(100))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("files-home")
    with live_server(Settings(home=home, preload=False, max_upload_bytes=UPLOAD_LIMIT, max_body_bytes=BODY_LIMIT)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def error(res, status: int, param: str | None = None) -> dict:
    assert res.status_code == status, res.text
    body = res.json()
    validate(body, "ErrorResponse")
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


def upload(server, content: bytes, purpose: str = "fine-tune", filename: str = "train.jsonl"):
    with server.http() as http:
        return http.post("/v1/files", files={"file": (filename, content)}, data={"purpose": purpose})


def test_upload_retrieve_download_delete(server, client):
    assert len(TRAIN) > BODY_LIMIT
    created = client.files.create(file=("train.jsonl", TRAIN), purpose="fine-tune")
    assert (created.object, created.filename, created.purpose, created.bytes) == ("file", "train.jsonl",
                                                                                  "fine-tune", len(TRAIN))
    with server.http() as http:
        got = http.get(f"/v1/files/{created.id}")
        validate(got.json(), "OpenAIFile")
        assert got.json() == created.model_dump(exclude_none=True)
        content = http.get(f"/v1/files/{created.id}/content")
        assert content.headers["content-type"] == "application/octet-stream"
        assert "train.jsonl" in content.headers["content-disposition"]
    assert content.content == TRAIN
    assert client.files.content(created.id).content == TRAIN
    assert client.files.retrieve(created.id).id == created.id

    with server.http() as http:
        deleted = http.delete(f"/v1/files/{created.id}")
        validate(deleted.json(), "DeleteFileResponse")
        assert deleted.json() == {"id": created.id, "object": "file", "deleted": True}
        error(http.get(f"/v1/files/{created.id}"), 404)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(created.id)


def test_list_filters_orders_and_pages(server, client):
    ids = [client.files.create(file=(f"f{i}.jsonl", TRAIN[: 100 + i]), purpose="fine-tune").id for i in range(3)]
    batch = client.files.create(file=("b.jsonl", b"{}\n"), purpose="batch").id
    with server.http() as http:
        body = http.get("/v1/files", params={"purpose": "fine-tune", "limit": 2}).json()
        validate(body, "ListFilesResponse")
        assert [f["id"] for f in body["data"]] == ids[::-1][:2] and body["has_more"] is True
        assert (body["first_id"], body["last_id"]) == (ids[2], ids[1])
        rest = http.get("/v1/files", params={"purpose": "fine-tune", "limit": 2, "after": body["last_id"]}).json()
        validate(rest, "ListFilesResponse")
        assert ids[0] in [f["id"] for f in rest["data"]]
        asc = http.get("/v1/files", params={"order": "asc"}).json()
        validate(asc, "ListFilesResponse")
        mine = [f["id"] for f in asc["data"] if f["id"] in ids + [batch]]
        assert mine == ids + [batch]
        error(http.get("/v1/files", params={"after": "file-nope"}), 404, "after")
        error(http.get("/v1/files", params={"limit": 0}), 400, "limit")
    # the client's auto-pagination walks every page
    listed = [f.id for f in client.files.list(purpose="fine-tune", limit=1)]
    assert listed[:3] == ids[::-1]
    assert batch not in listed


def test_size_limit_is_413(server):
    # caught as it streams, by the exact file limit...
    body = error(upload(server, b"x" * (UPLOAD_LIMIT + 1)), 413)
    assert body["code"] == "request_too_large" and "max_upload_bytes" in body["message"]
    # ...or at once, from Content-Length, when the whole body is far larger
    assert "max_upload_bytes" in error(upload(server, b"x" * (3 * UPLOAD_LIMIT)), 413)["message"]
    assert upload(server, b"x" * UPLOAD_LIMIT).status_code == 200
    # other routes keep the global limit
    with server.http() as http:
        res = http.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user",
                                                                                  "content": "x" * BODY_LIMIT}]})
    assert "max_body_bytes" in error(res, 413)["message"]


def test_bad_purpose_and_malformed_forms_are_400(server, client):
    assert "purpose" in error(upload(server, b"{}\n", purpose="nonsense"), 400, "purpose")["message"]
    error(upload(server, b"{}\n", purpose="fine-tune-results"), 400, "purpose")  # written by jobs only
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    with server.http() as http:
        error(http.post("/v1/files", files={"other": ("x", b"1")}, data={"purpose": "fine-tune"}), 400, "file")
        error(http.post("/v1/files", files={"file": ("x", b"1")}), 400, "purpose")
        error(http.post("/v1/files", json={"file": "x", "purpose": "fine-tune"}), 400)
        two = [("file", ("a", b"1")), ("file", ("b", b"2"))]
        error(http.post("/v1/files", files=two, data={"purpose": "fine-tune"}), 400, "file")


def test_unknown_ids_are_404(server):
    with server.http() as http:
        for res in (http.get("/v1/files/file-nope"), http.get("/v1/files/file-nope/content"),
                    http.delete("/v1/files/file-nope")):
            assert error(res, 404)["message"] == "No such File object: file-nope"
        # ids are looked up, never used as paths
        error(http.get("/v1/files/..%2F..%2Ftailor.db/content"), 404)


def test_a_filename_is_a_label_never_a_path(server, client):
    home = server.app.state.tailor.settings.home
    before = sorted(p for p in home.rglob("*") if ".upload-" not in p.name)
    for name, label in (("../../escape.jsonl", "escape.jsonl"), ("..\\..\\win.jsonl", "win.jsonl"),
                        ("/etc/passwd", "passwd"), ("..", "upload.jsonl"), ("ü ber.jsonl", "ü ber.jsonl")):
        created = client.files.create(file=(name, b"{}\n"), purpose="fine-tune")
        assert created.filename == label
    raw = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--b\r\nContent-Disposition: '
           b'form-data; name="file"; filename="cut\x00short\x07.jsonl"\r\n\r\n{}\n\r\n--b--\r\n')
    with server.http() as http:  # a NUL or other control character never reaches a stored name
        res = http.post("/v1/files", content=raw, headers={"content-type": "multipart/form-data; boundary=b"})
    assert res.status_code == 200 and res.json()["filename"] == "cutshort.jsonl", res.text
    assert not list(home.parent.glob("*.jsonl")) and not (home.parent / "escape.jsonl").exists()
    new = sorted(set(p for p in home.rglob("*")) - set(before))
    assert all(p.is_relative_to(home / "files" / "blobs") or p.suffix in (".db-wal", ".db-shm") for p in new), new


def test_same_bytes_share_one_blob_until_the_last_delete(server, client):
    content = b'{"same": true}\n'
    a = client.files.create(file=("a.jsonl", content), purpose="fine-tune")
    b = client.files.create(file=("b.jsonl", content), purpose="user_data")
    assert a.id != b.id
    client.files.delete(a.id)
    assert client.files.content(b.id).content == content
    client.files.delete(b.id)
    blobs = server.app.state.tailor.settings.files_dir / "blobs"
    assert not [p for p in blobs.iterdir() if p.read_bytes() == content]


def test_a_damaged_blob_is_a_500_that_does_not_show_the_servers_paths(server, client):
    created = client.files.create(file=("gone.jsonl", b'{"a": 1}\n'), purpose="fine-tune")
    home = server.app.state.tailor.settings.home
    for blob in (home / "files" / "blobs").rglob("*"):
        if blob.is_file() and blob.read_bytes() == b'{"a": 1}\n':
            blob.unlink()
    with server.http() as http:
        res = http.get(f"/v1/files/{created.id}/content")
    assert res.status_code == 500
    validate(res.json(), "ErrorResponse")
    assert "missing or damaged" in res.json()["error"]["message"] and str(home) not in res.text
