"""The checking pass over a bundle: the tar is streamed once, every member's path, type, size and sha256 is
checked against bundle.json (and bundle.json against its signature), and members are written only into a private
scratch folder. Nothing from the bundle reaches the store until this pass has seen every member intact."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tailorlm.bundle import signing
from tailorlm.bundle.format import BUNDLE_JSON, BUNDLE_SIG, MAX_JSON_BYTES, MAX_SIG_BYTES, BundleManifest, check_member
from tailorlm.errors import IntegrityError, InvalidRequestError, TailorError
from tailorlm.store.digests import CHUNK
from tailorlm.store.progress import Stages

# Given bundle.json, which members to write out (the others are only checked: e.g. a model already stored).
Selector = Callable[[BundleManifest], Callable[[str], bool]]


@dataclass
class Verified:
    """A bundle whose every member matched: its bundle.json (parsed and as bytes) and whether it was signed."""

    manifest: BundleManifest
    raw: bytes
    signature: bytes | None


class _Reader:
    """Walks the tar once, naming the bundle and the member in every refusal."""

    def __init__(self, file: Path, tar: tarfile.TarFile) -> None:
        self.file, self.tar = file, tar
        self.manifest: BundleManifest | None = None
        self.seen: set[str] = set()

    def refuse(self, why: str) -> IntegrityError:
        return IntegrityError(f"refusing bundle {self.file}: {why}")

    def next(self) -> tarfile.TarInfo | None:
        try:
            return self.tar.next()
        except (tarfile.TarError, EOFError, OSError):
            raise self.refuse(f"it is truncated or damaged: member {self.first_missing()} is cut short or missing") \
                from None

    def first_missing(self) -> str:
        if self.manifest is None:
            return BUNDLE_JSON
        return next((p for p in self.manifest.members if p not in self.seen), "(after the last)")

    def check(self, info: tarfile.TarInfo) -> None:
        """Plain relative path, regular file: a link, device or '..' never gets near the filesystem."""
        try:
            check_member(info.name)
        except IntegrityError:
            raise self.refuse(f"member {info.name!r} is not a plain relative path (absolute, '..' or odd)") from None
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise self.refuse(f"member {info.name} is a link, folder or special file, which bundles never hold")

    def small(self, info: tarfile.TarInfo, limit: int) -> bytes:
        self.check(info)
        if info.size > limit:
            raise self.refuse(f"member {info.name} is {info.size} bytes, more than {limit}")
        data = self._read(info, None, None)
        self.seen.add(info.name)
        return data

    def member(self, info: tarfile.TarInfo, dest: Path, write: bool, advance: Callable[[int], None]) -> None:
        assert self.manifest is not None
        self.check(info)
        expected = self.manifest.members.get(info.name)
        if expected is None:
            raise self.refuse(f"member {info.name} is not listed in {BUNDLE_JSON}")
        if info.name in self.seen:
            raise self.refuse(f"member {info.name} appears twice")
        if info.size != expected.size:
            raise self.refuse(f"member {info.name} has {info.size} bytes but {BUNDLE_JSON} says {expected.size}")
        out: IO[bytes] | None = None
        if write:
            target = dest / info.name
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                out = open(target, "xb")
            except OSError as exc:
                raise self.refuse(f"member {info.name} cannot be placed ({exc.strerror})") from None
        try:
            digest = self._read(info, out, advance)
        finally:
            if out is not None:
                out.close()
        if digest.decode() != expected.sha256:
            raise self.refuse(f"member {info.name} is corrupted: its sha256 does not match {BUNDLE_JSON}")
        self.seen.add(info.name)

    def _read(self, info: tarfile.TarInfo, out: IO[bytes] | None, advance: Callable[[int], None] | None) -> bytes:
        """The member's bytes (small ones) or, when streaming it, its sha256 hex digest."""
        sha, kept, got = hashlib.sha256(), bytearray(), 0
        src = self.tar.extractfile(info)
        assert src is not None  # a regular file, checked
        while True:
            try:
                chunk = src.read(CHUNK)
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise self.refuse(f"it is truncated: member {info.name} is cut short ({exc})") from None
            if not chunk:
                break
            got += len(chunk)
            if advance is None:
                kept += chunk
            else:
                sha.update(chunk)
                advance(len(chunk))
            if out is not None:
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise TailorError(f"cannot unpack {self.file}: writing {info.name} failed ({exc.strerror})") \
                        from None
        if got != info.size:
            raise self.refuse(f"it is truncated: member {info.name} is cut short")
        return bytes(kept) if advance is None else sha.hexdigest().encode()


def _check_room(file: Path, dest: Path, needed: int) -> None:
    """Refuse before writing anything when the members to unpack would not fit the disk (sizes as declared, which
    every member is then held to: a member longer than it says is refused, so the declaration is a bound)."""
    probe = dest if dest.exists() else next((p for p in dest.parents if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise TailorError(f"cannot unpack {file}: its members need {needed / 2**30:,.2f} GiB and {probe} has "
                          f"{free / 2**30:,.2f} GiB free")


def read_bundle(file: Path, dest: Path, *, verify_key: Path | None = None, select: Selector | None = None,
                show_progress: bool = True) -> Verified:
    """Check every member of `file`, writing the selected ones under `dest`; IntegrityError names what is wrong."""
    file = Path(file).expanduser()
    if not file.is_file():
        raise InvalidRequestError(f"bundle {file} does not exist", param="file")
    with open(file, "rb") as fh:
        try:
            tar = tarfile.open(fileobj=fh, mode="r|")
        except (tarfile.TarError, EOFError, OSError):
            raise IntegrityError(f"refusing bundle {file}: it is not a tailor bundle (not a tar file)") from None
        with tar:
            reader = _Reader(file, tar)
            info = reader.next()
            if info is None or info.name != BUNDLE_JSON:
                raise reader.refuse(f"it is not a tailor bundle (its first member is not {BUNDLE_JSON})")
            raw = reader.small(info, MAX_JSON_BYTES)
            manifest = reader.manifest = BundleManifest.parse(raw, str(file))
            info, signature = reader.next(), None
            if info is not None and info.name == BUNDLE_SIG:
                signature = reader.small(info, MAX_SIG_BYTES)
                info = reader.next()
            if verify_key is not None:
                if signature is None:
                    raise reader.refuse(f"it is not signed, so it cannot be verified with {verify_key}")
                signing.verify(verify_key, raw, signature, str(file))
            wanted = select(manifest) if select is not None else (lambda path: True)
            total = sum(d.size for d in manifest.members.values())
            _check_room(file, dest, sum(d.size for p, d in manifest.members.items() if wanted(p)))
            with Stages(f"verifying {file.name}", enabled=show_progress) as stages:
                advance = stages.bytes("checking sha256", total)
                while info is not None:
                    if info.name in (BUNDLE_JSON, BUNDLE_SIG):
                        raise reader.refuse(f"member {info.name} appears again after the start")
                    reader.member(info, dest, wanted(info.name), advance)
                    info = reader.next()
            missing = [p for p in manifest.members if p not in reader.seen]
            if missing:
                raise reader.refuse(f"it is truncated or incomplete: member {missing[0]} is missing")
    return Verified(manifest, raw, signature)
