"""Ed25519 signatures over the exact bytes of `bundle.json`: `keygen` writes a key pair as PEM files, `sign` and
`verify` use them. Signing bundle.json covers every member, since it holds each member's sha256."""

from __future__ import annotations

import os
from pathlib import Path

from tailorlm.errors import IntegrityError, InvalidRequestError


def public_path(private: Path) -> Path:
    return private.with_name(private.name + ".pub")


def keygen(path: Path) -> tuple[Path, Path]:
    """Write a new private key to `path` (PEM, mode 0600) and its public key to `path.pub`; never overwrites."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path).expanduser()
    pub = public_path(path)
    for target in (path, pub):
        if target.exists():
            raise InvalidRequestError(f"{target} already exists; choose another path or remove it first", param="path")
    if not path.parent.is_dir():
        raise InvalidRequestError(f"folder {path.parent} does not exist", param="path")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write(path, private_pem, 0o600)
    _write(pub, public_pem, 0o644)
    return path, pub


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # created with its mode: never briefly readable
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _read_pem(path: Path, what: str) -> bytes:
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidRequestError(f"{what} {path} does not exist", param="key")
    return path.read_bytes()


def sign(key_path: Path, data: bytes) -> bytes:
    """The Ed25519 signature of `data` with the private key in `key_path`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = _read_pem(key_path, "signing key")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise InvalidRequestError(f"{key_path} is not an unencrypted PEM private key; make one with `tailor keygen`",
                                  param="sign") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidRequestError(f"{key_path} is not an Ed25519 key; make one with `tailor keygen`", param="sign")
    return key.sign(data)


def verify(pub_path: Path, data: bytes, signature: bytes, source: str) -> None:
    """IntegrityError unless `signature` is the signature of `data` by the public key in `pub_path`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    pem = _read_pem(pub_path, "public key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise InvalidRequestError(f"{pub_path} is not a PEM public key (`tailor keygen PATH` writes one to PATH.pub)",
                                  param="verify") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidRequestError(f"{pub_path} is not an Ed25519 public key", param="verify")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise IntegrityError(f"the signature of {source} does not match {pub_path}: it was signed by another key "
                             "or bundle.json was changed; refusing it") from None
