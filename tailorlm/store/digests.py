"""sha256 digests of stored files: computed at import, checked by `verify`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from tailorlm.store.manifest import MANIFEST_FILE, FileDigest

CHUNK = 8 * 1024 * 1024


def hash_file(path: Path, advance: Callable[[int], None] | None = None, *, sync: bool = False) -> str:
    """sha256 of `path`, read in 8 MiB chunks; `sync` also fsyncs it (staged files must be durable)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if advance:
                advance(len(chunk))
        if sync:
            try:
                os.fsync(fh.fileno())
            except OSError:  # some platforms refuse fsync on a read-only handle
                pass
    return digest.hexdigest()


def stored_files(folder: Path) -> list[Path]:
    """Every regular file under `folder` except the manifest, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def digest_folder(folder: Path, advance: Callable[[int], None] | None = None) -> dict[str, FileDigest]:
    """Relative posix path -> digest for every file in `folder`, fsyncing each."""
    return {
        p.relative_to(folder).as_posix(): FileDigest(sha256=hash_file(p, advance, sync=True), size=p.stat().st_size)
        for p in stored_files(folder)
    }


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def verify_files(folder: Path, files: dict[str, FileDigest], model: str, fix: str) -> None:
    """Raise IntegrityError naming the first file whose size or sha256 differs from `files`."""
    from tailorlm.errors import IntegrityError

    for rel, expected in files.items():
        path = folder / rel
        if not path.is_file():
            raise IntegrityError(f"{rel} of model {model} is missing; {fix}")
        # Size first: it is free and catches the common failure, a truncated copy.
        size = path.stat().st_size
        if size != expected.size:
            raise IntegrityError(
                f"{rel} of model {model} is corrupted or truncated: expected {expected.size} bytes, got {size}; {fix}"
            )
        got = hash_file(path)
        if got != expected.sha256:
            raise IntegrityError(
                f"{rel} of model {model} is corrupted or truncated: expected sha256 {expected.sha256}, got {got}; {fix}"
            )
