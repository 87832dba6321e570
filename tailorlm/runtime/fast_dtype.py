"""dtype "fast": the fastest weight format of a stored model that still behaves like it, on this machine.

On a CPU a decode step is bound by the bytes of weights it reads, so int8 weights (read in place by the C++
step's int8 tiles, one byte per weight) decode about twice as fast as float32 and run prompts through the
same tiles (docs/benchmarks.md). Whether int8 is faithful enough depends on the model, so it is checked, not
assumed: the export parity gate (tailorlm/export/parity.py) with int8's threshold, the stored weights as the
source and the int8 load as the artifact. A model that fails, or that the C++ step cannot run, is served in
its stored dtype. The verdict is kept per model (its files' digests), step build and threshold under
HOME/cache/dtype-gate, so the gate runs once per model and machine kind, not at every start.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from tailorlm.config import Settings
from tailorlm.store.manifest import Manifest

log = logging.getLogger(__name__)


def _verdict_path(settings: Settings, manifest: Manifest, isa: str) -> Path:
    from tailorlm.export.parity import THRESHOLDS

    digests = sorted((name, f.sha256) for name, f in manifest.files.items())
    key = json.dumps([digests, isa, asdict(THRESHOLDS["int8"])]).encode()
    return settings.home / "cache" / "dtype-gate" / f"{hashlib.sha256(key).hexdigest()[:24]}.json"


def fast_dtype(path: Path, manifest: Manifest, settings: Settings) -> tuple[str, str]:
    """(the dtype to load, one line saying why): int8 where it passes the parity gate, else "auto"."""
    from tailorlm.engine import native_step

    if settings.kernels != "native":
        return "auto", "stored dtype (dtype fast needs the native kernels for int8)"
    try:
        isa = native_step.extension().kernel_isa()
    except RuntimeError as exc:
        return "auto", f"stored dtype (no C++ step for int8: {exc})"
    cached = _verdict_path(settings, manifest, isa)
    if cached.is_file():
        verdict = json.loads(cached.read_text(encoding="utf-8"))
        return verdict["dtype"], verdict["why"] + " (cached verdict)"
    dtype, why = _gate(path, manifest)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps({"dtype": dtype, "why": why, "model": manifest.name, "isa": isa}), encoding="utf-8")
    tmp.replace(cached)
    return dtype, why


def _gate(path: Path, manifest: Manifest) -> tuple[str, str]:
    from tailorlm.engine import load_model
    from tailorlm.export.parity import compare, golden_prompts
    from tailorlm.export.run import src_eos
    from transformers import AutoTokenizer

    log.info("dtype fast: checking %s in int8 against its stored weights (once per model)", manifest.name)
    context = 512  # the golden prompts and their continuations are short
    int8 = load_model(path, name=manifest.name, dtype="int8")
    artifact = int8.runner_factory(1, context)
    if artifact.native is None:
        return "auto", "stored dtype (the C++ step does not run this architecture, so int8 would not be faster)"
    source = load_model(path, name=manifest.name, dtype="auto").runner_factory(1, context)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    report = compare(source, artifact, golden_prompts(tokenizer), set(src_eos(path, tokenizer)), "int8")
    if report.passed:
        return "int8", f"int8 (passed the parity gate against the stored weights: {report.summary()})"
    return "auto", f"stored dtype (int8 failed the parity gate: {report.summary()})"
