"""Knowledge bases: extraction per format, chunking, ingestion (idempotent, isolated, transactional),
hybrid search with filters, and the `tailor kb` verbs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tailorlm.cli.kb  # noqa: F401  (registers the verbs on `app`)
from tailorlm.cli import app
from tailorlm.config import Settings
from tailorlm.embeddings import EmbeddingModels
from tailorlm.errors import AlreadyExistsError, InvalidRequestError, NotFoundError
from tailorlm.kb import KnowledgeBases
from tailorlm.kb import store as kb_store
from tailorlm.kb.chunking import chunk_blocks
from tailorlm.kb.extract import ExtractionError, extract, joined

REFUNDS = "Refunds are paid back to the original card within fourteen days of the request."
PHONE = "Our helpdesk answers the telephone from nine to five on weekdays."
CODE = "The vault access code for the Lisbon office is ZX-4471."


@pytest.fixture(scope="module")
def embeddings() -> EmbeddingModels:
    return EmbeddingModels("all-minilm-l6-v2")  # one loaded model for the whole module


@pytest.fixture
def kbs(tailor_home: Path, embeddings: EmbeddingModels) -> KnowledgeBases:
    return KnowledgeBases(Settings(home=tailor_home), embeddings=embeddings)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "billing.md").write_text(f"# Billing\n\n## Refunds\n\n{REFUNDS}\n")
    (folder / "support.txt").write_text(f"{PHONE}\n\nEmail gets an answer within a day.\n")
    (folder / "office.txt").write_text(f"{CODE}\n")
    return folder


def _pdf(path: Path, text: str) -> Path:
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})})
    content = DecodedStreamObject()
    content.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode())
    page[NameObject("/Contents")] = writer._add_object(content)
    writer.write(path)
    return path


def test_each_format_extracts(tmp_path: Path) -> None:
    import docx

    (tmp_path / "a.txt").write_text("First paragraph.\r\n\r\nSecond paragraph.")
    (tmp_path / "a.md").write_text("# Title\n\nSome text.\n\n```\n# not a heading\n\ncode\n```\n\n## Sub\n\nMore.")
    (tmp_path / "a.html").write_text("<html><head><title>x</title><style>p{}</style></head><body><h1>Intro</h1>"
                                     "<p>Hello <b>bold</b> world.</p><ul><li>one</li><li>two</li></ul>"
                                     "<script>var x;</script></body></html>")
    _pdf(tmp_path / "a.pdf", "The aurora project launched in spring.")
    document = docx.Document()
    document.add_heading("Setup", 1)
    document.add_paragraph("Install the package first.")
    document.save(tmp_path / "a.docx")
    (tmp_path / "a.jsonl").write_text('{"text": "plain record"}\n\n'
                                      '{"messages": [{"role": "user", "content": "hi"}]}\n{"other": 1}\n')

    def shape(name: str) -> list[tuple[str, int]]:
        return [(b.text, b.level) for b in extract(tmp_path / name)]

    assert shape("a.txt") == [("First paragraph.", 0), ("Second paragraph.", 0)]
    assert shape("a.md") == [("Title", 1), ("Some text.", 0), ("```\n# not a heading\n\ncode\n```", 0),
                             ("Sub", 2), ("More.", 0)]
    assert shape("a.html") == [("Intro", 1), ("Hello bold world.", 0), ("one", 0), ("two", 0)]
    assert shape("a.pdf") == [("The aurora project launched in spring.", 0)]
    assert shape("a.docx") == [("Setup", 1), ("Install the package first.", 0)]
    assert shape("a.jsonl") == [("plain record", 0), ("user: hi", 0), ('{"other": 1}', 0)]

    (tmp_path / "a.xyz").write_text("x")
    (tmp_path / "empty.md").write_text("# Only a heading\n")
    (tmp_path / "broken.pdf").write_bytes(b"not a pdf")
    for name in ("a.xyz", "empty.md", "broken.pdf"):
        with pytest.raises(ExtractionError):
            extract(tmp_path / name)


def test_chunks_respect_headings_overlap_and_token_limit(tmp_path: Path, embeddings: EmbeddingModels) -> None:
    tokenizer = embeddings.get("all-minilm-l6-v2").model.tokenizer
    long = " ".join(f"Sentence number {i} talks about topic {i * 7}." for i in range(60))
    (tmp_path / "g.md").write_text(f"# Guide\n\nShort intro.\n\n## Setup\n\n{long}\n\nA last paragraph.\n\n"
                                   "# Other\n\nTail text.")
    blocks = extract(tmp_path / "g.md")
    text, chunks = chunk_blocks(blocks, tokenizer, max_tokens=40, overlap=10)
    assert text == joined(blocks)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert chunks[0].heading == "Guide" and chunks[0].text == "Short intro."
    assert chunks[-1].heading == "Other" and chunks[-1].text == "Tail text."
    setup = [c for c in chunks if c.heading == "Guide › Setup"]
    assert len(setup) > 5
    for c in chunks:
        assert text[c.start:c.end] == c.text
        assert 0 < len(c.ids) <= 40
        assert "Guide" not in c.text and "Other" not in c.text  # never across a heading
    for a, b in zip(setup, setup[1:]):
        assert b.start < a.end  # overlap
        assert a.text.endswith(".")  # cut at a sentence, not mid-word
        assert b.text[0].isupper()  # the overlap starts at a sentence
    assert setup[-1].text.endswith("A last paragraph.")
    with pytest.raises(ValueError):
        chunk_blocks(blocks, tokenizer, max_tokens=10, overlap=10)


def test_hybrid_search_finds_keyword_and_paraphrase(kbs: KnowledgeBases, docs: Path) -> None:
    kbs.create("Company", metadata={"team": "ops"})
    results = kbs.add_paths("company", sorted(docs.iterdir()))
    assert [r.status for r in results] == ["added"] * 3
    kb = kbs.get("company")
    assert kb.id.startswith("vs_") and kb.metadata == {"team": "ops"}
    assert (kb.files, kb.chunks) == (3, 3) and kb.bytes == sum(p.stat().st_size for p in docs.iterdir())

    exact = kbs.search("company", "ZX-4471", k=1)
    assert exact[0].filename == "office.txt" and "ZX-4471" in exact[0].text
    paraphrase = kbs.search(kb.id, "how long until my money comes back", k=1)
    assert paraphrase[0].text == REFUNDS and paraphrase[0].heading == "Billing › Refunds"
    hit = paraphrase[0]
    assert (hit.position, hit.start, hit.end) == (0, len("Billing\n\nRefunds\n\n"), len("Billing\n\nRefunds\n\n") +
                                                  len(REFUNDS))
    assert kbs.search("company", "phone opening hours", k=1, mode="vector")[0].filename == "support.txt"
    assert kbs.search("company", "ZX-4471", mode="keyword")[0].filename == "office.txt"
    assert kbs.search("company", "cash reimbursement", mode="keyword") == []  # no shared words: vectors needed
    assert kbs.search("company", "cash reimbursement", k=1)[0].text == REFUNDS
    assert 0 < len(kbs.search("company", "the", k=2)) <= 2
    with pytest.raises(InvalidRequestError):
        kbs.search("company", "  ")


def test_re_adding_is_a_no_op_and_a_change_replaces(kbs: KnowledgeBases, docs: Path) -> None:
    kbs.create("kb")
    first = kbs.add_path("kb", docs / "office.txt", attributes={"site": "lisbon"})
    again = kbs.add_path("kb", docs / "office.txt")
    assert again.status == "unchanged" and again.file.id == first.file.id
    assert (kbs.get("kb").files, kbs.get("kb").chunks) == (1, 1)

    (docs / "office.txt").write_text("The vault access code for the Lisbon office is now QQ-1234.\n")
    changed = kbs.add_path("kb", docs / "office.txt")
    assert changed.status == "added" and changed.file.id == first.file.id
    assert changed.file.attributes == {"site": "lisbon"}  # kept from the earlier version
    assert (kbs.get("kb").files, kbs.get("kb").chunks) == (1, 1)
    assert kbs.search("kb", "ZX-4471", mode="keyword") == []
    assert kbs.search("kb", "QQ-1234")[0].file_id == first.file.id


def test_a_failing_file_is_reported_and_the_others_go_on(kbs: KnowledgeBases, docs: Path) -> None:
    kbs.create("kb")
    (docs / "bad.jsonl").write_text("{not json\n")
    results = kbs.add_paths("kb", [docs / "bad.jsonl", docs / "missing.txt", docs / "office.txt"], show_progress=True)
    assert [r.status for r in results] == ["failed", "failed", "added"]
    assert "line 1 is not JSON" in results[0].error and "missing.txt" in results[1].error
    files = {f.filename: f for f in kbs.files("kb")}
    assert files["bad.jsonl"].status == "failed" and files["bad.jsonl"].chunks == 0
    assert files["office.txt"].status == "completed"
    assert kbs.search("kb", "vault code")[0].filename == "office.txt"

    (docs / "bad.jsonl").write_text('{"text": "fixed now"}\n')  # a retry replaces the failed row
    assert kbs.add_path("kb", docs / "bad.jsonl").status == "added"
    assert kbs.get_file("kb", files["bad.jsonl"].id).status == "completed"


def _consistent(kbs: KnowledgeBases) -> None:
    conn = kbs.conn
    chunks = conn.execute("SELECT count(*) FROM kb_chunks").fetchone()[0]
    assert conn.execute("SELECT count(*) FROM kb_fts").fetchone()[0] == chunks
    assert conn.execute("SELECT coalesce(sum(chunks), 0) FROM kb_files").fetchone()[0] == chunks


def test_a_crash_mid_ingestion_leaves_no_half_file(kbs: KnowledgeBases, docs: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    kbs.create("kb")
    model = kbs.embeddings.get("all-minilm-l6-v2").model
    real = model.embed_ids
    calls = []

    def flaky(seqs):
        calls.append(len(seqs))
        if len(calls) == 2:
            raise RuntimeError("simulated crash while embedding")
        return real(seqs)

    monkeypatch.setattr(model, "embed_ids", flaky)
    results = kbs.add_paths("kb", [docs / "office.txt", docs / "billing.md"])
    assert [r.status for r in results] == ["added", "failed"]
    assert "simulated crash" in results[1].error
    assert kbs.search("kb", "vault code")[0].filename == "office.txt"
    _consistent(kbs)
    monkeypatch.setattr(model, "embed_ids", real)

    # A crash inside the write itself: the transaction rolls back, the earlier version stays whole.
    (docs / "office.txt").write_text("Replaced text that must never be half written.\n\nSecond paragraph here.")
    insert = kb_store._insert_chunks

    def crash_after_rows(conn, file, chunks, vectors):
        insert(conn, file, chunks, vectors)
        raise KeyboardInterrupt  # not an Exception: it escapes add_path, as a real interruption would

    monkeypatch.setattr(kb_store, "_insert_chunks", crash_after_rows)
    with pytest.raises(KeyboardInterrupt):
        kbs.add_path("kb", docs / "office.txt")
    _consistent(kbs)
    assert kbs.search("kb", "vault code", k=1)[0].text.strip() == CODE
    assert kbs.search("kb", "never half written", mode="keyword") == []


def test_filters_on_attributes_and_filename(kbs: KnowledgeBases, docs: Path) -> None:
    kbs.create("kb")
    kbs.add_path("kb", docs / "billing.md", attributes={"team": "finance", "year": 2024})
    kbs.add_path("kb", docs / "support.txt", attributes={"team": "support", "year": 2025})
    kbs.add_path("kb", docs / "office.txt", attributes={"team": "ops", "year": 2023, "secret": True})

    def names(filters: dict, mode: str = "hybrid") -> set[str]:
        return {h.filename for h in kbs.search("kb", "code refunds telephone", k=10, mode=mode, filters=filters)}

    assert names({"type": "eq", "key": "team", "value": "support"}) == {"support.txt"}
    assert names({"type": "ne", "key": "team", "value": "support"}) == {"billing.md", "office.txt"}
    assert names({"type": "gte", "key": "year", "value": 2024}, "keyword") == {"billing.md", "support.txt"}
    assert names({"type": "lt", "key": "year", "value": 2024}, "vector") == {"office.txt"}
    assert names({"type": "or", "filters": [{"type": "eq", "key": "filename", "value": "billing.md"},
                                           {"type": "eq", "key": "secret", "value": True}]}) == {"billing.md",
                                                                                                "office.txt"}
    assert names({"type": "and", "filters": [{"type": "gt", "key": "year", "value": 2023},
                                            {"type": "in", "key": "team", "value": ["ops", "finance"]}]}) \
        == {"billing.md"}
    assert names({"type": "eq", "key": "team", "value": "nobody"}) == set()
    with pytest.raises(InvalidRequestError):
        kbs.search("kb", "x", filters={"type": "near", "key": "a", "value": 1})


def test_names_ids_and_errors(kbs: KnowledgeBases, docs: Path) -> None:
    kb = kbs.create("alpha")
    with pytest.raises(AlreadyExistsError):
        kbs.create("Alpha")
    with pytest.raises(InvalidRequestError, match="knowledge base name"):
        kbs.create("../escape")
    for call in (lambda: kbs.get("nope"), lambda: kbs.search("nope", "x"), lambda: kbs.files("nope"),
                 lambda: kbs.add_path("nope", docs / "office.txt"), lambda: kbs.remove("nope"),
                 lambda: kbs.get_file("alpha", "file-missing"), lambda: kbs.remove_file("alpha", "file-x")):
        with pytest.raises(NotFoundError) as info:
            call()
        assert info.value.status == 404
    renamed = kbs.update(kb.id, name="beta", metadata={"k": "v"})
    assert (renamed.id, renamed.name, renamed.metadata) == (kb.id, "beta", {"k": "v"})
    added = kbs.add_path("beta", docs / "office.txt", file_id="file-abc")
    assert added.file.id == "file-abc"
    kbs.remove_file("beta", "file-abc")
    assert kbs.files("beta") == [] and kbs.search("beta", "vault code") == []
    kbs.add_path("beta", docs / "office.txt")
    kbs.remove("beta")
    assert kbs.list() == []
    _consistent(kbs)


def test_cli_verbs(docs: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["kb", "create", "handbook"]).exit_code == 0
    added = runner.invoke(app, ["kb", "add", "handbook", str(docs / "billing.md"), str(docs / "office.txt")])
    assert added.exit_code == 0, added.output
    assert "added billing.md (1 chunks)" in added.output
    found = runner.invoke(app, ["kb", "search", "handbook", "when is my money returned", "-k", "1"])
    assert found.exit_code == 0 and "billing.md #0" in found.stdout and REFUNDS in found.stdout
    keyword = runner.invoke(app, ["kb", "search", "handbook", "ZX-4471", "--mode", "keyword"])
    assert "office.txt" in keyword.stdout and "billing.md" not in keyword.stdout
    listed = runner.invoke(app, ["kb", "list"])
    assert "handbook" in listed.stdout and "vs_" in listed.stdout
    assert "office.txt" in runner.invoke(app, ["kb", "files", "handbook"]).stdout
    (docs / "bad.jsonl").write_text("nope\n")
    failed = runner.invoke(app, ["kb", "add", "handbook", str(docs / "bad.jsonl"), str(docs / "support.txt")])
    assert failed.exit_code == 1 and "failed" in failed.output and "added support.txt" in failed.output
    assert runner.invoke(app, ["kb", "rm", "handbook"]).exit_code == 0

    done = subprocess.run([sys.executable, "-c", "from tailorlm.cli import main; main()", "kb", "search", "handbook",
                           "x"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: No knowledge base named or with id 'handbook'; "
                                               "see `tailor kb list`."]


def test_vector_cache_follows_deletes_and_survives_a_restart(kbs: KnowledgeBases, docs: Path, tailor_home: Path,
                                                           embeddings: EmbeddingModels,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from tailorlm.kb import index

    monkeypatch.setattr(index, "SIDECAR_MIN_ROWS", 1)  # write the sidecar on every refresh
    kb = kbs.create("kb")
    office = kbs.add_path("kb", docs / "office.txt").file
    kbs.add_path("kb", docs / "billing.md")
    assert kbs.search("kb", "vault code", k=1, mode="vector")[0].filename == "office.txt"  # cache loaded
    kbs.remove_file("kb", office.id)
    kbs.add_path("kb", docs / "support.txt")
    assert {h.filename for h in kbs.search("kb", "vault code", k=5, mode="vector")} == {"billing.md", "support.txt"}
    assert (tailor_home / "kb" / kb.id / "vectors.npz").is_file()

    fresh = KnowledgeBases(Settings(home=tailor_home), embeddings=embeddings)  # a new process: from the sidecar
    vectors = fresh.cache.get(fresh.conn, kb.id, 384)
    assert vectors.rowids.tolist() == [r[0] for r in fresh.conn.execute("SELECT id FROM kb_chunks ORDER BY id")]
    assert fresh.search("kb", "phone hours", k=1, mode="vector")[0].filename == "support.txt"
    fresh.remove("kb")
    assert not (tailor_home / "kb" / kb.id).exists()


def test_demo_questions_have_their_answers_in_the_demo_documents():
    """The retrieval benchmark's answer passages must stay findable if the documents are edited."""
    demo = Path(str(files("tailorlm.kb") / "demo"))
    texts = {p.name: " ".join(joined(extract(p)).split()) for p in demo.iterdir()
             if p.suffix in (".md", ".txt", ".html", ".pdf", ".docx", ".jsonl") and p.name != "questions.jsonl"}
    questions = [json.loads(line) for line in (demo / "questions.jsonl").read_text().splitlines() if line.strip()]
    assert len(questions) >= 40
    for q in questions:
        assert any(" ".join(a["text"].split()) in texts[a["file"]] for a in q["answers"]), q["question"]


def test_keyword_search_leaves_out_words_common_to_most_chunks(kbs: KnowledgeBases, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tailorlm.kb import index

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(6):
        (folder / f"note{i}.txt").write_text(f"Common wording appears in every note. Code QX-{i}{i}{i} is unique.")
    kbs.create("many")
    kbs.add_paths("many", sorted(folder.iterdir()))
    monkeypatch.setattr(index, "COMMON_MIN_DOCS", 2)  # "common", "wording", "note", "unique" are in 6 of 6 chunks
    assert index._rare_words(kbs.conn, ["common", "wording", "qx", "333"]) == ["333"]
    assert index._rare_words(kbs.conn, ["common", "wording"]) in (["common"], ["wording"])  # never nothing
    hits = kbs.search("many", "common wording QX-333", mode="keyword")
    assert hits[0].filename == "note3.txt"


def test_a_file_removed_while_it_was_embedded_is_never_written(kbs: KnowledgeBases, docs: Path) -> None:
    kbs.create("kb")
    result = kbs.add_path("kb", docs / "office.txt", file_id="file-gone", cancelled=lambda: True)
    assert result.status == "failed" and result.file.status == "cancelled"
    assert kbs.files("kb") == [] and kbs.search("kb", "ZX-4471", mode="keyword") == []
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really")  # a failure after removal leaves no record either
    kbs.add_path("kb", docs / "broken.pdf", file_id="file-gone2", cancelled=lambda: True)
    assert kbs.files("kb") == []


def test_markdown_headings_parse_in_linear_time(tmp_path: Path) -> None:
    """A document is user input: 1 MB of Markdown built to make a backtracking heading pattern quadratic extracts
    in well under a second, and headings keep CommonMark's closing rule."""
    from tailorlm.kb.extract import markdown_blocks

    lines = ["# a" + " " * 8000 + "b", "## x" + " " * 8000 + "#" * 3 + " " * 8000 + "y", "#" * 6 + " " * 8000]
    (tmp_path / "evil.md").write_text("\n".join(lines * 45) + "\n\nSome text.")  # ~1 MB
    start = time.perf_counter()
    extract(tmp_path / "evil.md")
    assert time.perf_counter() - start < 1.0
    shape = [(b.text, b.level) for b in markdown_blocks("# C#\n## Title ##\n### Spaced   #  \n#nohash\n####### seven")]
    assert shape == [("C#", 1), ("Title", 2), ("Spaced", 3), ("#nohash\n####### seven", 0)]
