"""The llama.cpp peer: fetch and build it outside the repo, find its binaries, convert our weights to GGUF.

    python benchmarks/llamacpp.py build               # pip download the sdist, unpack, cmake (≈ 10 min on 2 cores)
    python benchmarks/llamacpp.py convert [--outtype f32|q8_0]   # our stored model -> GGUF, prints the path
    python benchmarks/llamacpp.py where               # what was found, and where

Nothing here is ever written inside the repository. Locations (environment variables override the defaults):

- TAILOR_PEERS_DIR       root for sources, builds and converted models   (default /tmp/peers)
- TAILOR_LLAMA_CPP_DIR   the llama.cpp source tree   (default $TAILOR_PEERS_DIR/llama_cpp_python-0.3.36/vendor/llama.cpp)
- TAILOR_LLAMA_SERVER    the llama-server binary      (default <source tree>/build/bin/llama-server, then $PATH)
- TAILOR_LLAMA_QUANTIZE  the llama-quantize binary    (default next to llama-server)
- TAILOR_CONVERT_PYTHON  the Python that runs convert_hf_to_gguf.py (default: this one if it has `sentencepiece`,
                         else a venv $TAILOR_PEERS_DIR/convert-venv made with --system-site-packages + sentencepiece)

The source is llama.cpp as vendored in the `llama-cpp-python` 0.3.36 source package on PyPI (the only index these
machines reach). The converter imports the `gguf` package from the vendored `gguf-py` (it puts it on sys.path itself),
not pip's `gguf`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
TARGETS = ("llama-server", "llama-quantize", "llama-bench")
CMAKE_FLAGS = ("-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release")
# Kernels per ISA: native (this CPU's), or AVX2 + FMA + F16C only, the peer of our forced-AVX2 runs on an AVX-512
# machine (GGML_NATIVE off, so the build machine's AVX-512 is not picked up). Each ISA builds in its own folder.
ISA_FLAGS = {"native": ("-DGGML_NATIVE=ON",),
             "avx2": ("-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
                      "-DGGML_AVX512=OFF", "-DGGML_AVX512_VBMI=OFF", "-DGGML_AVX512_VNNI=OFF",
                      "-DGGML_AVX512_BF16=OFF", "-DGGML_AVX_VNNI=OFF")}


class PeerNotFound(RuntimeError):
    pass


def peers_dir() -> Path:
    return Path(os.environ.get("TAILOR_PEERS_DIR", "/tmp/peers"))


def source_dir() -> Path:
    env = os.environ.get("TAILOR_LLAMA_CPP_DIR")
    return Path(env) if env else peers_dir() / SDIST / "vendor" / "llama.cpp"


def build_dir(isa: str = "native") -> Path:
    """Where `build` puts the binaries of `isa` (native: build/, else build-<isa>/)."""
    return source_dir() / ("build" if isa == "native" else f"build-{isa}")


def _how_to_build() -> str:
    return ("build it with `python benchmarks/llamacpp.py build` (≈ 10 min on 2 cores; see benchmarks/README.md), "
            "or point TAILOR_LLAMA_SERVER at a llama-server binary")


def find_server(isa: str = "native") -> Path:
    """The llama-server binary: $TAILOR_LLAMA_SERVER, else the build for `isa`, else (native only) $PATH."""
    env = os.environ.get("TAILOR_LLAMA_SERVER")
    if env:
        path = Path(env)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise PeerNotFound(f"TAILOR_LLAMA_SERVER={env} is not an executable file")
        return path
    built = build_dir(isa) / "bin" / "llama-server"
    if built.is_file():
        return built
    if isa != "native":
        raise PeerNotFound(f"llama-server for {isa} not found at {built}; build it with "
                           f"`python benchmarks/llamacpp.py build --isa {isa}`")
    found = shutil.which("llama-server")
    if found:
        return Path(found)
    raise PeerNotFound(f"llama-server not found (looked at {built} and $PATH); {_how_to_build()}")


def find_quantize() -> Path:
    env = os.environ.get("TAILOR_LLAMA_QUANTIZE")
    if env:
        return Path(env)
    candidates = [build_dir(isa) / "bin" / "llama-quantize" for isa in ISA_FLAGS]  # any build quantizes alike
    server = os.environ.get("TAILOR_LLAMA_SERVER")
    if server:
        candidates.insert(0, Path(server).parent / "llama-quantize")
    for path in candidates:
        if path.is_file():
            return path
    found = shutil.which("llama-quantize")
    if found:
        return Path(found)
    raise PeerNotFound(f"llama-quantize not found (looked at {', '.join(map(str, candidates))}); {_how_to_build()}")


def server_version(server: Path | None = None) -> str:
    """`llama-server --version`, first line that names the build (e.g. 'version: 1 (abc1234)')."""
    server = server or find_server()
    try:
        out = subprocess.run([str(server), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("version"):
            return ln
    return lines[0] if lines else "unknown"


# -- build ---------------------------------------------------------------------------------------


def fetch_sources(dest: Path | None = None) -> Path:
    """pip download the llama-cpp-python sdist (PyPI) and unpack it; returns the vendored llama.cpp tree."""
    dest = dest or peers_dir()
    dest.mkdir(parents=True, exist_ok=True)
    tree = dest / SDIST / "vendor" / "llama.cpp"
    if (tree / "CMakeLists.txt").is_file():
        return tree
    archive = dest / f"{SDIST}.tar.gz"
    if not archive.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(dest)], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return tree


def build(tree: Path | None = None, jobs: int = 2, targets: tuple[str, ...] = TARGETS, isa: str = "native") -> float:
    """Configure and build `targets` for `isa` in `tree`/build_dir(isa); returns the build's wall seconds."""
    tree = tree or fetch_sources()
    folder = build_dir(isa).name
    t0 = time.perf_counter()
    subprocess.run(["cmake", "-B", folder, *CMAKE_FLAGS, *ISA_FLAGS[isa]], cwd=tree, check=True)
    subprocess.run(["cmake", "--build", folder, f"-j{jobs}", "--target", *targets], cwd=tree, check=True)
    return time.perf_counter() - t0


# -- convert -------------------------------------------------------------------------------------


def _has_sentencepiece(python: str) -> bool:
    return subprocess.run([python, "-c", "import sentencepiece"], capture_output=True).returncode == 0


def convert_python() -> str:
    """A Python that can run convert_hf_to_gguf.py.

    The converter's Llama path imports `sentencepiece` before it looks for a tokenizer.model (it falls back to
    tokenizer.json only on FileNotFoundError), so it needs the package even for our BPE tokenizer. Rather than
    installing into the shared environment, make a venv that sees the system site-packages and add it there.
    """
    env = os.environ.get("TAILOR_CONVERT_PYTHON")
    if env:
        return env
    if _has_sentencepiece(sys.executable):
        return sys.executable
    venv = peers_dir() / "convert-venv"
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    # A venv's --system-site-packages is the base interpreter's; when this Python is itself a venv (ours: torch,
    # transformers), a .pth file puts its packages on the converter's path too.
    import site
    import sysconfig

    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()] or [sysconfig.get_paths()["purelib"]]
    (Path(target) / "tailorlm-env.pth").write_text("\n".join(ours) + "\n")
    if not _has_sentencepiece(str(python)):
        subprocess.run([str(python), "-m", "pip", "install", "-q", "sentencepiece"], check=True)
    return str(python)


def store_model(name: str | None = None, home: Path | None = None) -> tuple[str, Path, str]:
    """(name, HF folder, sha256 of its weights) of a stored model; the embedded default is pulled if absent."""
    from tailorlm.config import get_settings
    from tailorlm.store import ModelStore

    store = ModelStore(home)
    manifest = store.ensure(name or get_settings().default_model, show_progress=True)
    weights = sorted((k, v.sha256) for k, v in manifest.files.items() if k.endswith(".safetensors"))
    digest = weights[0][1] if weights else "unknown"
    return manifest.name, store.path(manifest.name), digest


def gguf_dir() -> Path:
    return Path(os.environ.get("TAILOR_LLAMA_GGUF_DIR", peers_dir() / "gguf"))


def _quiet(cmd: list[str], cwd: Path | None = None) -> None:
    """Run a chatty tool; show the end of its output only if it fails."""
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{tail}")


def convert(name: str | None = None, home: Path | None = None, outtype: str = "f32", force: bool = False) -> Path:
    """GGUF of stored model `name` at `outtype` (f32: the very same weights we serve; q8_0: via llama-quantize).

    Files are cached in $TAILOR_LLAMA_GGUF_DIR (default $TAILOR_PEERS_DIR/gguf) under the weights' digest, so a
    re-imported model is converted again.
    """
    key, folder, digest = store_model(name, home)
    out_dir = gguf_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{key}-{digest[:12]}.{outtype}.gguf"
    if out.is_file() and not force:
        return out
    tmp = out.with_suffix(".tmp")
    if outtype == "f32":
        script = source_dir() / "convert_hf_to_gguf.py"
        if not script.is_file():
            raise PeerNotFound(f"{script} not found; fetch the sources with `python benchmarks/llamacpp.py build`")
        _quiet([convert_python(), str(script), str(folder), "--outtype", "f32", "--outfile", str(tmp)], cwd=source_dir())
    else:
        src = convert(name, home, "f32", force=False)
        _quiet([str(find_quantize()), str(src), str(tmp), outtype.upper()])
    tmp.replace(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="fetch the sources (PyPI sdist) and build llama-server and llama-quantize")
    b.add_argument("-j", "--jobs", type=int, default=2)
    b.add_argument("--isa", choices=tuple(ISA_FLAGS), default="native",
                   help="native, or avx2: AVX2/FMA/F16C kernels only (the AVX2 peer on an AVX-512 machine)")
    c = sub.add_parser("convert", help="convert a stored model to GGUF; prints its path")
    c.add_argument("--model", default=None, help="store name (default: the embedded default)")
    c.add_argument("--outtype", default="f32", help="f32 (same weights as ours) or a llama-quantize type, e.g. q8_0")
    c.add_argument("--force", action="store_true")
    sub.add_parser("where", help="print the source tree, binaries and their version")
    args = ap.parse_args()
    if args.cmd == "build":
        seconds = build(jobs=args.jobs, isa=args.isa)
        print(f"built {', '.join(TARGETS)} in {seconds / 60:.1f} min under {build_dir(args.isa) / 'bin'}")
    elif args.cmd == "convert":
        print(convert(args.model, outtype=args.outtype, force=args.force))
    else:
        print(f"sources:        {source_dir()}")
        for label, fn in (("llama-server", find_server), ("llama-quantize", find_quantize)):
            try:
                print(f"{label + ':':<16}{fn()}")
            except PeerNotFound as exc:
                print(f"{label + ':':<16}missing ({exc})")
        try:
            print(f"version:        {server_version()}")
        except PeerNotFound:
            pass


if __name__ == "__main__":
    main()
