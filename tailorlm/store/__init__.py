"""The model store: manifests, digests, atomic import from HF folders, GGUF files, the hub and embedded defaults."""

from tailorlm.store.manifest import FileDigest, Manifest
from tailorlm.store.store import ModelStore

__all__ = ["FileDigest", "Manifest", "ModelStore"]
