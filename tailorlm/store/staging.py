"""Atomic imports: build under home/tmp/<pid>-<uuid>/, then one rename publishes the model."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType

from tailorlm.errors import AlreadyExistsError
from tailorlm.store.digests import fsync_dir


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours (or we cannot tell): leave it alone
    return True


def remove_stale(tmp_root: Path) -> None:
    """Delete scratch folders left by processes that died mid-import (killed, power loss)."""
    if not tmp_root.is_dir():
        return
    for entry in tmp_root.iterdir():
        pid_text = entry.name.split("-", 1)[0]
        if not pid_text.isdigit() or not _pid_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


class Staging:
    """Scratch folders for one import; every one left is deleted on exit, success or not."""

    def __init__(self, tmp_root: Path) -> None:
        self.tmp_root = tmp_root
        self._dirs: list[Path] = []

    def __enter__(self) -> Staging:
        remove_stale(self.tmp_root)
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)

    def new_dir(self) -> Path:
        """A fresh empty folder named after this process, so others can tell it is still in use."""
        path = self.tmp_root / f"{os.getpid()}-{uuid.uuid4().hex}"
        path.mkdir()
        self._dirs.append(path)
        return path

    def publish(self, staged: Path, target: Path, name: str, *, overwrite: bool, kind: str = "model") -> None:
        """Rename the finished `staged` folder to `target` (replacing it only if `overwrite`)."""
        fsync_dir(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if target.exists():
            if not overwrite:
                raise AlreadyExistsError(f"{kind} {name} is already in the store; use --force to replace it")
            old = self.new_dir()
            os.rename(target, old / "old")
        try:
            os.rename(staged, target)
        except OSError as exc:
            if old is not None:
                os.rename(old / "old", target)  # put the previous version back
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise AlreadyExistsError(f"{kind} {name} was added to the store by another import meanwhile") from exc
            raise
        fsync_dir(target.parent)
