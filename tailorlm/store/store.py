"""ModelStore: the local catalogue of models, each an HF-format folder with a verified manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tailorlm.config import get_settings
from tailorlm.errors import InvalidRequestError, ModelNotFoundError
from tailorlm.store import defaults, hub
from tailorlm.store.catalogue import Catalogue
from tailorlm.store.hf_folder import check_weights, convert_pickle, copy_model_files, load_config, pickle_weights
from tailorlm.store.manifest import Manifest
from tailorlm.store.metadata import describe
from tailorlm.store.names import name_from_path, validate_name
from tailorlm.store.progress import Stages
from tailorlm.store.staging import Staging

# fill(staged_dir, staging, stages) writes the model files and returns describe() hints
Filler = Callable[[Path, Staging, Stages], dict[str, Any]]


class ModelStore(Catalogue[Manifest]):
    """Models under `home/models/<folder>/`, each complete with `manifest.json` or absent."""

    kind = "model"
    manifest_type = Manifest

    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home is not None else get_settings().home
        super().__init__(self.home / "models", self.home / "tmp")
        self.models_dir = self.root

    # -- reading ---------------------------------------------------------------------------------

    def get(self, name: str) -> Manifest:
        """The manifest of `name`, or ModelNotFoundError suggesting `tailor list` / `tailor pull`."""
        key = validate_name(name)
        manifest = self.find(key)
        if manifest is not None:
            return manifest
        raise ModelNotFoundError(
            f"model {key} is not in the store; {self.close_match(key)}see `tailor list` for local models, "
            f"or fetch it with `tailor pull {key}`"
        )

    def path(self, name: str) -> Path:
        """The model's HF-format folder (what `from_pretrained` takes)."""
        return self.folder(self.get(name).name)

    def verify(self, name: str) -> None:
        """Check size then sha256 of every file against the manifest; IntegrityError names the bad file."""
        manifest = self.get(name)
        self.verify_item(manifest, f"re-import it with {self._reimport(manifest)}")

    @staticmethod
    def _reimport(manifest: Manifest) -> str:
        kind, _, where = manifest.source.partition(":")
        if kind in ("hf-folder", "gguf"):
            return f"`tailor import {where} --name {manifest.name} --force`"
        return f"`tailor pull {manifest.name} --force`"

    # -- changing --------------------------------------------------------------------------------

    def remove(self, name: str) -> None:
        """Delete a model: renamed out of `models/` first, so no half-deleted model is ever listed."""
        self.remove_item(self.get(name))

    def import_path(
        self, path: str | Path, name: str | None = None, allow_pickle: bool = False,
        show_progress: bool = True, overwrite: bool = False,
    ) -> Manifest:
        """Import an HF folder or a .gguf file (or a folder holding just one .gguf)."""
        src = Path(path).expanduser().resolve()
        if not src.exists():
            raise InvalidRequestError(f"{path} does not exist", param="path")
        if src.is_dir() and not any(src.glob("*.safetensors")) and not pickle_weights(src):
            ggufs = sorted(src.glob("*.gguf"))
            if len(ggufs) > 1:
                raise InvalidRequestError(f"{src} holds several .gguf files; import one of them by path", param="path")
            src = ggufs[0] if ggufs else src
        key = validate_name(name) if name is not None else name_from_path(src)
        if src.is_file():
            if src.suffix.lower() != ".gguf":
                raise InvalidRequestError(f"{src} is neither a model folder nor a .gguf file", param="path")
            return self._build(key, f"gguf:{src}", overwrite, show_progress, self._gguf_filler(src))
        return self._build(key, f"hf-folder:{src}", overwrite, show_progress, self._folder_filler(src, allow_pickle))

    def pull(self, ref: str, show_progress: bool = True, overwrite: bool = False) -> Manifest:
        """Fetch an embedded default by name, or "ORG/NAME" from the Hugging Face Hub."""
        key = validate_name(ref)
        if key in defaults.EMBEDDED:
            model = defaults.EMBEDDED[key]
            if not overwrite:
                self.check_absent(key)  # before locate: "already there" beats "package missing"
            gguf = defaults.locate(key)
            return self._build(key, model.source, overwrite, show_progress, self._gguf_filler(gguf, model.license))
        if "/" not in key:
            known = ", ".join(defaults.EMBEDDED)
            raise ModelNotFoundError(
                f"unknown model {ref}: not an embedded default ({known}) nor a Hugging Face repo ORG/NAME"
            )

        def fill(staged: Path, staging: Staging, stages: Stages) -> dict[str, Any]:
            stages.stage("downloading")
            download = staging.new_dir()
            hub.download(ref.strip(), download)
            hub.check_download(ref.strip(), download)
            return self._folder_filler(download, allow_pickle=False, move=True)(staged, staging, stages)

        return self._build(key, f"hub:{ref.strip()}", overwrite, show_progress, fill)

    def ensure(self, name: str, show_progress: bool = True) -> Manifest:
        """The model if present; an embedded default is pulled on first use; else ModelNotFoundError."""
        key = validate_name(name)
        try:
            return self.get(key)
        except ModelNotFoundError:
            if key not in defaults.EMBEDDED:
                raise
        return self.pull(key, show_progress=show_progress)

    def add_artifact(self, key: str, source: str, fill: Filler, extra: dict[str, Any], *,
                     overwrite: bool = False, show_progress: bool = True) -> Manifest:
        """Register an artifact `fill` writes (an export): staged, hashed and published like an import;
        `extra` sets manifest fields the files cannot tell (format, quantization, what it was made from)."""
        return self._build(validate_name(key), source, overwrite, show_progress, fill, extra)

    # -- import pipeline -------------------------------------------------------------------------

    def _build(self, key: str, source: str, overwrite: bool, show_progress: bool, fill: Filler,
               extra: dict[str, Any] | None = None) -> Manifest:
        """Stage, hash, write the manifest last, then publish with one rename."""
        if not overwrite:
            self.check_absent(key)
        with Staging(self.tmp_dir) as staging, Stages(key, enabled=show_progress) as stages:
            staged = staging.new_dir()
            hints = fill(staged, staging, stages)
            advance = stages.bytes("hashing", self.staged_bytes(staged))
            return self.publish(
                staged, staging,
                lambda files: Manifest(name=key, source=source, files=files, **{**describe(staged, **hints), **(extra or {})}),
                overwrite=overwrite, advance=advance,
            )

    def _folder_filler(self, src: Path, allow_pickle: bool, move: bool = False) -> Filler:
        def fill(staged: Path, staging: Staging, stages: Stages) -> dict[str, Any]:
            stages.stage("checking config")
            config = load_config(src)
            pickles = check_weights(src, allow_pickle)
            stages.stage("copying files")
            copy_model_files(src, staged, move=move)
            if pickles:
                stages.stage("converting pickle to safetensors")
                from tailorlm.engine.shape import ModelShape  # torch is loaded for the conversion anyway

                convert_pickle(pickles, staged, ModelShape.of(config).tied)
            return {}

        return fill

    def _gguf_filler(self, gguf: Path, license_fallback: str | None = None) -> Filler:
        def fill(staged: Path, staging: Staging, stages: Stages) -> dict[str, Any]:
            from tailorlm.store.gguf_import import convert_gguf

            meta = convert_gguf(gguf, staged, staging.new_dir(), stages)
            return {"license_hint": meta.get("general.license"), "license_fallback": license_fallback}

        return fill

