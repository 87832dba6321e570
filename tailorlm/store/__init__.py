"""The model store: manifests, digests, atomic import from HF folders, GGUF files, the hub and embedded defaults."""

from tailorlm.store.manifest import FileDigest, Manifest
from tailorlm.store.store import ModelStore
from tailorlm.store.adapters import AdapterManifest, AdapterStore  # noqa: E402  (needs ModelStore)

__all__ = ["AdapterManifest", "AdapterStore", "FileDigest", "Manifest", "ModelStore"]
