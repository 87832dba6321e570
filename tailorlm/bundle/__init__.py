"""Portable bundles: one `.tailor` file (a tar led by bundle.json) with everything needed to run a model, adapter
or preset on another machine, every member's sha256 checked before anything is registered; optional ed25519."""

from tailorlm.bundle.format import SUFFIX, BundleManifest
from tailorlm.bundle.pack import pack_bundle
from tailorlm.bundle.signing import keygen
from tailorlm.bundle.unpack import Unpacked, unpack_bundle

__all__ = ["SUFFIX", "BundleManifest", "Unpacked", "keygen", "pack_bundle", "unpack_bundle"]
