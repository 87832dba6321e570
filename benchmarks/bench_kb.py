"""Knowledge bases: retrieval quality on the demo question set, and speed at scale beside FAISS.

    python benchmarks/bench_kb.py [--part quality|scale|both] [--chunks 10000] [--random-vectors] [--json kb.json]

quality: ingests the shipped demo documents (tailorlm/kb/demo) into a fresh knowledge base in a temporary
    TAILOR_HOME and asks the shipped questions (demo/questions.jsonl); a question is answered when one of the
    top-k chunks comes from an answer file and contains that answer's text. Reports recall@k for vector,
    keyword and hybrid search, per question kind, and lists every miss. Bar: hybrid >= 0.9 and no lower than
    either single method.
scale: ingests --chunks synthetic chunks (one section of 40 pseudo-words each, in markdown files of 1,000
    sections) and reports ingestion chunks/s and query p50/p99 (vector, keyword, hybrid), side by side with
    FAISS over the very same vectors: an exact IndexFlatIP and an IndexHNSWFlat (M=32, efSearch=64).
    With --random-vectors the embedding model is replaced by seeded random unit vectors (one per text), so
    that ingestion measures chunking, storage and indexing only; the output says so.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, quiet_torch  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "tailorlm" / "kb" / "demo"
NOT_DOCUMENTS = {"README.md", "questions.jsonl"}
MODES = ("vector", "keyword", "hybrid")
SECTIONS_PER_FILE = 1000
WORDS_PER_CHUNK = 40


def demo_documents() -> list[Path]:
    """The demo knowledge base: every document in tailorlm/kb/demo but its README, questions and script."""
    return sorted(p for p in DEMO.iterdir() if p.is_file() and p.name not in NOT_DOCUMENTS and p.suffix != ".py")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: with fewer than 100 values p99 is the maximum."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q / 100 * len(ordered))) - 1))]


@contextlib.contextmanager
def fresh_home():
    """A temporary TAILOR_HOME, so that the benchmark never touches the user's store."""
    with tempfile.TemporaryDirectory(prefix="tailor-bench-kb-") as home:
        old = os.environ.get("TAILOR_HOME")
        os.environ["TAILOR_HOME"] = home
        try:
            yield Path(home)
        finally:
            if old is None:
                os.environ.pop("TAILOR_HOME", None)
            else:
                os.environ["TAILOR_HOME"] = old


def open_kbs(home: Path):
    from tailorlm.config import Settings
    from tailorlm.kb import KnowledgeBases

    return KnowledgeBases(Settings(home=home))


# -- quality ---------------------------------------------------------------------------------------

def quality(k: int) -> dict:
    questions = [json.loads(line) for line in (DEMO / "questions.jsonl").read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    docs = demo_documents()
    with fresh_home() as home:
        kbs = open_kbs(home)
        kbs.create("demo")
        t0 = time.perf_counter()
        results = kbs.add_paths("demo", docs, show_progress=False)
        ingest_s = time.perf_counter() - t0
        failed = [r.error for r in results if r.status == "failed"]
        per_mode: dict[str, dict] = {}
        for mode in MODES:
            answered, misses, latencies = [], [], []
            for q in questions:
                t = time.perf_counter()
                hits = kbs.search("demo", q["question"], k=k, mode=mode)
                latencies.append(time.perf_counter() - t)
                rank = next((i for i, h in enumerate(hits) if _answers(h, q["answers"])), None)
                answered.append(rank is not None)
                if rank is None:
                    misses.append({"question": q["question"], "kind": q["kind"],
                                   "expected": sorted({a["file"] for a in q["answers"]}),
                                   "got": [f"{h.filename}#{h.position}" for h in hits]})
            by_kind = {}
            for kind in sorted({q["kind"] for q in questions}):
                flags = [a for a, q in zip(answered, questions) if q["kind"] == kind]
                by_kind[kind] = sum(flags) / len(flags)
            per_mode[mode] = {"recall": sum(answered) / len(answered), "by_kind": by_kind, "misses": misses,
                              "p50_ms": 1000 * percentile(latencies, 50)}
    chunks = sum(r.file.chunks for r in results)
    return {"questions": len(questions), "documents": [d.name for d in docs], "chunks": chunks,
            "ingest_s": ingest_s, "failed": failed, "k": k, "modes": per_mode}


def _answers(hit, answers: list[dict]) -> bool:
    text = _norm(hit.text)
    return any(hit.filename == a["file"] and _norm(a["text"]) in text for a in answers)


def print_quality(r: dict) -> None:
    m = r["modes"]
    kinds = list(m["hybrid"]["by_kind"])
    print(f"\n## Retrieval quality: {r['questions']} questions over {len(r['documents'])} demo documents "
          f"({r['chunks'] or '?'} chunks, ingested in {r['ingest_s']:.1f} s)\n")
    print(f"| search | recall@{r['k']} | " + " | ".join(f"{kind}" for kind in kinds) + " | p50 ms |")
    print("|---|---|" + "---|" * len(kinds) + "---|")
    for mode in MODES:
        cells = " | ".join(f"{m[mode]['by_kind'][kind]:.2f}" for kind in kinds)
        print(f"| {mode} | {m[mode]['recall']:.3f} | {cells} | {m[mode]['p50_ms']:.1f} |")
    ok = m["hybrid"]["recall"] >= 0.9 and m["hybrid"]["recall"] >= max(m["vector"]["recall"], m["keyword"]["recall"])
    print(f"\nbar (hybrid >= 0.9 and >= vector and keyword): {'met' if ok else 'NOT met'}")
    if r["failed"]:
        print(f"files that failed to ingest: {r['failed']}")
    for mode in MODES:
        for miss in m[mode]["misses"]:
            print(f"- {mode} missed ({miss['kind']}): {miss['question']!r} expected {miss['expected']}, "
                  f"got {miss['got']}")


# -- scale -----------------------------------------------------------------------------------------

def vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    """Pronounceable pseudo-words, distinct, 2 to 4 syllables."""
    onsets = ["b", "br", "c", "ch", "d", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "pl", "qu", "r", "s",
              "sh", "st", "t", "th", "tr", "v", "w", "z"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "oo", "ou"]
    words: dict[str, None] = {}
    while len(words) < size:
        n = int(rng.integers(2, 5))
        words["".join(onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))] for _ in range(n))] = None
    return list(words)


def synthetic_corpus(folder: Path, chunks: int, seed: int) -> tuple[list[Path], list[str]]:
    """Markdown files of SECTIONS_PER_FILE sections, one ~WORDS_PER_CHUNK-word paragraph each: one chunk per
    section. Words are Zipf-distributed over a 20,000-word vocabulary, like natural text."""
    rng = np.random.default_rng(seed)
    vocab = np.array(vocabulary(20_000, rng))
    ranks = np.arange(1, len(vocab) + 1)
    probs = 1.0 / ranks ** 1.07
    probs /= probs.sum()
    texts, paths = [], []
    for start in range(0, chunks, SECTIONS_PER_FILE):
        n = min(SECTIONS_PER_FILE, chunks - start)
        words = rng.choice(vocab, size=(n, WORDS_PER_CHUNK), p=probs)
        body = [" ".join(row) + "." for row in words]
        path = folder / f"synthetic-{start // SECTIONS_PER_FILE:05d}.md"
        path.write_text("\n\n".join(f"## Section {start + i}\n\n{t}" for i, t in enumerate(body)), encoding="utf-8")
        texts.extend(body)
        paths.append(path)
    return paths, texts


def random_unit(seqs, dim: int) -> np.ndarray:
    """A seeded random unit vector per token sequence (seeded by its digest): the same input, the same vector."""
    out = np.empty((len(seqs), dim), np.float32)
    for i, ids in enumerate(seqs):
        seed = int.from_bytes(hashlib.blake2b(np.asarray(ids, np.int64).tobytes(), digest_size=8).digest(), "little")
        v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
        out[i] = v / np.linalg.norm(v)
    return out


class EmbedTimer:
    """Wraps the loaded embedding model's `embed_ids` (every chunk and query goes through it): times it, or,
    with `random_vectors`, replaces the model's forward pass by `random_unit`."""

    def __init__(self, model, random_vectors: bool) -> None:
        self.seconds = 0.0
        inner = model.embed_ids

        def embed_ids(seqs):
            t = time.perf_counter()
            try:
                return random_unit(seqs, model.dim) if random_vectors else inner(seqs)
            finally:
                self.seconds += time.perf_counter() - t

        model.embed_ids = embed_ids


def scale(chunks: int, queries: int, k: int, random_vectors: bool, seed: int, peers_wanted: list[str]) -> dict:
    import faiss

    with fresh_home() as home, tempfile.TemporaryDirectory(prefix="tailor-bench-kb-docs-") as docs:
        t = time.perf_counter()
        paths, texts = synthetic_corpus(Path(docs), chunks, seed)
        gen_s = time.perf_counter() - t
        kbs = open_kbs(home)
        model = kbs.embeddings.get(kbs.settings.embedding_model).model
        timer = EmbedTimer(model, random_vectors)
        kb = kbs.create("scale")
        t0 = time.perf_counter()
        results = kbs.add_paths("scale", paths, show_progress=sys.stderr.isatty())
        ingest_s = time.perf_counter() - t0
        embed_s = timer.seconds
        failed = [r.error for r in results if r.status == "failed"]

        rng = np.random.default_rng(seed + 1)
        picks = rng.choice(len(texts), size=min(queries, len(texts)), replace=False)
        qtexts = []
        for i in picks:  # six consecutive words of a chunk: keyword search has something to match
            words = texts[i].rstrip(".").split()
            j = int(rng.integers(0, len(words) - 6))
            qtexts.append(" ".join(words[j:j + 6]))

        ours: dict[str, dict] = {}
        first_search_s = None
        for mode in MODES:
            t = time.perf_counter()
            kbs.search("scale", qtexts[0], k=k, mode=mode)  # warm-up: the first vector search loads the matrix
            first_search_s = first_search_s or time.perf_counter() - t
            lat, exact = [], []
            for q in qtexts:
                t = time.perf_counter()
                hits = kbs.search("scale", q, k=k, mode=mode)
                lat.append(time.perf_counter() - t)
                exact.append([int(h.chunk_id.removeprefix("chunk_")) for h in hits])
            ours[mode] = {"p50_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99), "ids": exact}
        # the very vectors our vector search ranks (its cache of the SQLite rows), for FAISS
        cached = kbs.cache.get(kbs.conn, kb.id, model.dim)
        stored, rowids = cached.matrix, cached.rowids
        n = stored.shape[0]
        t = time.perf_counter()
        qvec = np.stack([model.embed([q])[0][0] for q in qtexts]).astype(np.float32)
        embed_ms = 1000 * (time.perf_counter() - t) / len(qtexts)
        kbs.conn.close()

    peers: dict[str, dict] = {}
    faiss.omp_set_num_threads(torch_threads())
    exact_sets = None
    kinds = {"flat": ("FAISS IndexFlatIP (exact)", lambda d: faiss.IndexFlatIP(d)),
             "hnsw": ("FAISS IndexHNSWFlat M=32 efSearch=64", _hnsw)}
    for name, make in [kinds["flat"]] + [kinds[p] for p in peers_wanted if p != "flat"]:  # flat: the reference
        index = make(stored.shape[1])
        t = time.perf_counter()
        for s in range(0, n, 10_000):
            index.add(stored[s:s + 10_000])
        build_s = time.perf_counter() - t
        lat, found = [], []
        for v in qvec:
            t = time.perf_counter()
            _, idx = index.search(v[None, :], k)
            lat.append(time.perf_counter() - t)
            found.append({int(rowids[i]) for i in idx[0] if i >= 0})
        if exact_sets is None:
            exact_sets = found
        agree = float(np.mean([len(f & e) / k for f, e in zip(found, exact_sets)]))
        peers[name] = {"build_s": build_s, "add_per_s": n / build_s, "p50_ms": 1000 * percentile(lat, 50),
                       "p99_ms": 1000 * percentile(lat, 99), "recall_vs_exact": agree}
    ours_agree = float(np.mean([len(set(o) & e) / k for o, e in zip(ours["vector"]["ids"], exact_sets)]))
    for mode in MODES:
        ours[mode].pop("ids")
    return {"chunks": n, "requested": chunks, "files": len(paths), "failed": failed,
            "random_vectors": random_vectors, "generate_s": gen_s, "ingest_s": ingest_s, "embed_s": embed_s,
            "ingest_per_s": n / ingest_s, "first_search_s": first_search_s, "queries": len(qtexts), "k": k,
            "query_embed_ms": embed_ms, "vector_recall_vs_exact": ours_agree, "ours": ours, "peers": peers}


def _hnsw(dim: int):
    import faiss

    index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = 64
    return index


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def print_scale(r: dict) -> None:
    how = ("seeded random unit vectors instead of the embedding model: ingestion excludes embedding, "
           "and vector results carry no meaning (latency only)" if r["random_vectors"]
           else "the default embedding model (all-MiniLM-L6-v2)")
    print(f"\n## Scale: {r['chunks']:,} synthetic chunks in {r['files']} files, {r['queries']} queries, "
          f"k={r['k']}\n\nVectors: {how}.\n")
    print("| index | ingest / build s | chunks/s | vector p50 ms | vector p99 ms | hybrid p50 ms | "
          "hybrid p99 ms | keyword p50 ms | keyword p99 ms | recall@k vs exact |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    o = r["ours"]
    print(f"| tailorlm knowledge base | {r['ingest_s']:.1f} (embedding {r['embed_s']:.1f}) | "
          f"{r['ingest_per_s']:,.0f} | {o['vector']['p50_ms']:.2f} | {o['vector']['p99_ms']:.2f} | "
          f"{o['hybrid']['p50_ms']:.2f} | {o['hybrid']['p99_ms']:.2f} | {o['keyword']['p50_ms']:.2f} | "
          f"{o['keyword']['p99_ms']:.2f} | {r['vector_recall_vs_exact']:.3f} |")
    for name, p in r["peers"].items():
        print(f"| {name} | {p['build_s']:.2f} (vectors given) | {p['add_per_s']:,.0f} | {p['p50_ms']:.3f} | "
              f"{p['p99_ms']:.3f} | – | – | – | – | {p['recall_vs_exact']:.3f} |")
    print(f"\nOur latencies are end to end (`KnowledgeBases.search`: embedding the query, {r['query_embed_ms']:.2f} ms "
          "measured alone, the search, reading the hits' text from SQLite); FAISS's are the index search alone, "
          "on the same vectors. FAISS's build excludes extraction, chunking, embedding and storage, which our "
          f"ingestion includes. First search after ingestion (loads the vector matrix): {r['first_search_s']:.2f} s.")
    if r["failed"]:
        print(f"files that failed to ingest: {r['failed']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["quality", "scale", "both"], default="both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--chunks", type=int, default=10_000, help="scale: synthetic chunks (e.g. 1000000)")
    ap.add_argument("--queries", type=int, default=200, help="scale: queries per search mode")
    ap.add_argument("--random-vectors", action="store_true",
                    help="scale: seeded random unit vectors instead of the embedding model")
    ap.add_argument("--peers", default="flat,hnsw", help="scale: FAISS indexes beside ours (flat is always built: "
                    "it is the exact reference; hnsw takes minutes at 1M chunks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    quiet_torch(args.threads)

    info = machine()
    print(f"# knowledge bases · {info['cpu']} · {args.threads} threads · {info['date']} · commit {info['commit']}")
    print(f"command: python benchmarks/bench_kb.py {' '.join(sys.argv[1:])}")
    out: dict = {"machine": info, "args": vars(args)}
    if args.part in ("quality", "both"):
        out["quality"] = quality(args.k)
        print_quality(out["quality"])
    if args.part in ("scale", "both"):
        out["scale"] = scale(args.chunks, args.queries, args.k, args.random_vectors, args.seed,
                             [p for p in args.peers.split(",") if p])
        print_scale(out["scale"])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
