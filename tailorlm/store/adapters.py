"""AdapterStore: LoRA adapters (PEFT format, safetensors only) stored beside the base models they tune."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from tailorlm.config import get_settings
from tailorlm.errors import AlreadyExistsError, InvalidRequestError, ModelNotFoundError
from tailorlm.store import peft
from tailorlm.store.catalogue import Catalogue
from tailorlm.store.hf_folder import check_inside
from tailorlm.store.manifest import FileDigest, StoredManifest, now_iso
from tailorlm.store.names import validate_name
from tailorlm.store.staging import Staging
from tailorlm.store.store import ModelStore

FINE_TUNED_PREFIX = "ft:"  # OpenAI's fine-tuned model names: ft:<base>:<suffix>:<job-id>


class AdapterManifest(StoredManifest):
    """What the store knows about one adapter; saved as `manifest.json` beside its files, written last."""

    schema_version: int = 1
    name: str
    base: str
    rank: int
    alpha: float
    target_modules: list[str]
    use_rslora: bool = False
    created_at: str = Field(default_factory=now_iso)
    extra: dict[str, Any] = Field(default_factory=dict)  # e.g. the fine-tuning job id and its metrics
    files: dict[str, FileDigest]

    @property
    def fingerprint(self) -> str:
        """Changes whenever a stored file does (an adapter added again with --force)."""
        return ",".join(f"{rel}:{d.sha256}" for rel, d in sorted(self.files.items()))


class AdapterStore(Catalogue[AdapterManifest]):
    """Adapters under `home/adapters/<folder>/`: adapter_config.json, adapter_model.safetensors, manifest.json."""

    kind = "adapter"
    manifest_type = AdapterManifest

    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home is not None else get_settings().home
        super().__init__(self.home / "adapters", self.home / "tmp")

    def get(self, name: str) -> AdapterManifest:
        """The manifest of `name`, or ModelNotFoundError (404) suggesting `tailor adapters list`."""
        key = validate_name(name)
        manifest = self.find(key)
        if manifest is None:
            raise ModelNotFoundError(
                f"adapter {key} is not in the store; {self.close_match(key)}see `tailor adapters list`"
            )
        return manifest

    def resolve(self, name: str) -> AdapterManifest | None:
        """The adapter called `name`, or None when `name` is no adapter's (so a base model's).

        An unknown `ft:` name raises ModelNotFoundError, never falls back to a base; an `ft:` name that is
        a stored model (the result of full fine-tuning) is a model, so None.
        """
        found = self.find(name)
        if found is not None or not validate_name(name).startswith(FINE_TUNED_PREFIX):
            return found
        if ModelStore(self.home).find(name) is not None:
            return None
        return self.get(name)

    def path(self, name: str) -> Path:
        """The adapter's PEFT folder (what `PeftModel.from_pretrained` takes)."""
        return self.folder(self.get(name).name)

    def verify(self, name: str) -> None:
        """Check size then sha256 of every file; IntegrityError names the bad file."""
        self.verify_item(self.get(name), "remove it with `tailor adapters rm` and add it again")

    def remove(self, name: str) -> None:
        self.remove_item(self.get(name))

    def add(self, name: str, base: str, folder: Path, *, extra: dict[str, Any] | None = None,
            overwrite: bool = False) -> AdapterManifest:
        """Store the PEFT LoRA adapter in `folder` under `name`, for the stored model `base`."""
        key = validate_name(name)
        models = ModelStore(self.home)
        base_name = models.get(base).name  # ModelNotFoundError: an adapter needs its base in the store
        if models.find(key) is not None:
            raise AlreadyExistsError(f"{key} is the name of a stored model; give the adapter its own name")
        if not overwrite:
            self.check_absent(key)
        src = Path(folder).expanduser()
        for fname in (peft.CONFIG_FILE, peft.WEIGHTS_FILE):
            if (src / fname).exists():
                check_inside(src / fname, src)  # a link out of the folder is refused, as for models
        spec = peft.parse_config(peft.read_config(src))
        peft.pair_keys(_tensor_names(src / peft.WEIGHTS_FILE))
        with Staging(self.tmp_dir) as staging:
            staged = staging.new_dir()
            for fname in (peft.CONFIG_FILE, peft.WEIGHTS_FILE):
                shutil.copyfile(src / fname, staged / fname)
            return self.publish(staged, staging, lambda files: AdapterManifest(
                name=key, base=base_name, rank=spec.rank, alpha=spec.alpha, target_modules=spec.target_modules,
                use_rslora=spec.use_rslora, extra=dict(extra or {}), files=files,
            ), overwrite=overwrite)


def _tensor_names(path: Path) -> list[str]:
    """Tensor names from a safetensors header (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except (SafetensorError, OSError) as exc:
        raise InvalidRequestError(f"{path} is not a readable safetensors file: {exc}", param="path") from exc
