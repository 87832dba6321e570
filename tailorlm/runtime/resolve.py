"""What a model name means: one precedence for the CLI, the server, bundles, export and eval.

    alias (settings.aliases; no name or "default": settings.default_model)
    → preset (`name`, `name@N`: its model, adapter, instructions, defaults and knowledge)
    → adapter (`ft:<base>:<suffix>:<job>` or a stored adapter's name; an unknown `ft:` name is a 404)
    → stored model (imported, pulled, or an exported GGUF/ONNX artifact)
    → embedded default (shipped in a PyPI package; pulled into the store on first use)
    → ModelNotFoundError (404), never a fallback to another model.

Resolving reads manifests only; nothing is pulled or loaded until a caller opens what was resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tailorlm.config import Settings
from tailorlm.errors import InvalidRequestError, ModelNotFoundError
from tailorlm.presets import Preset, PresetStore
from tailorlm.store import AdapterManifest, AdapterStore, Manifest, ModelStore, defaults
from tailorlm.store.names import validate_name

Kind = Literal["preset", "adapter", "model"]
DEFAULT_ALIAS = "default"
_MAX_ALIAS_HOPS = 8


@dataclass(frozen=True)
class Resolved:
    """A name resolved. `model` is the stored model that computes (for an adapter or a preset, the base);
    `manifest` is None only for an embedded default that is not in the store yet."""

    asked: str  # the name as the caller wrote it
    kind: Kind
    name: str  # the canonical name: the preset's ref as asked ("pip", "pip@2"), the adapter's or the model's
    model: str
    manifest: Manifest | None = None
    adapter: AdapterManifest | None = None
    preset: Preset | None = None

    @property
    def target(self) -> str:
        """What an engine opens: the adapter's name (served by its base's engine), else the model's."""
        return self.adapter.name if self.adapter is not None else self.model

    @property
    def base(self) -> Resolved:
        """The stored model alone (what a preset or an adapter runs over)."""
        return Resolved(self.model, "model", self.model, self.model, self.manifest)

    @property
    def embedded(self) -> bool:
        return self.manifest is None

    @property
    def artifact(self) -> str | None:
        """The format of an exported artifact (gguf, onnx); None for safetensors weights (an imported or
        embedded GGUF is converted to safetensors as it enters the store)."""
        fmt = self.manifest.format if self.manifest is not None else "safetensors"
        return None if fmt == "safetensors" else fmt


def dealias(name: str | None, settings: Settings) -> str:
    """`name` after the configured aliases (followed, with a loop check); no name is the default model."""
    current = (name or "").strip() or DEFAULT_ALIAS
    aliases = {k.strip().lower(): v for k, v in settings.aliases.items()}
    aliases.setdefault(DEFAULT_ALIAS, settings.default_model)
    seen = [current]
    while current.lower() in aliases:
        current = aliases[current.lower()].strip()
        if current in seen or len(seen) > _MAX_ALIAS_HOPS:
            raise InvalidRequestError(f"the aliases of {name!r} loop: {' -> '.join(seen + [current])}",
                                      param="model")
        seen.append(current)
    return current


def resolve(name: str | None, settings: Settings) -> Resolved:
    """Resolve `name` in the one precedence (ModelNotFoundError when nothing has that name)."""
    asked = name or DEFAULT_ALIAS
    key = dealias(name, settings)
    return _preset(asked, key, settings) or _adapter(asked, key, settings) or _model(asked, key, settings)


def no_presets(found: Resolved, what: str) -> Resolved:
    """`found`, unless it is a preset, which `what` (e.g. "export") cannot take: then a clear error."""
    if found.preset is not None:
        raise InvalidRequestError(f"{found.name} is a preset; {what} takes its model ({found.target}) or, to carry "
                                  f"the whole preset, `tailor bundle pack {found.name}`", param="model")
    return found


def _preset(asked: str, key: str, settings: Settings) -> Resolved | None:
    preset = PresetStore(settings.home).find(key)
    if preset is None:
        return None
    ref = key.strip().lower()
    inner = _adapter(ref, preset.adapter, settings) if preset.adapter else _model(ref, preset.model, settings)
    if inner is None:  # an adapter removed after the preset was made
        raise ModelNotFoundError(f"preset {ref} runs on {preset.adapter}, which is no longer in the store")
    return Resolved(asked, "preset", ref, inner.model, inner.manifest, inner.adapter, preset)


def _adapter(asked: str, key: str, settings: Settings) -> Resolved | None:
    if "@" in key:
        return None
    adapter = AdapterStore(settings.home).resolve(key)  # an unknown ft: name: ModelNotFoundError
    if adapter is None:
        return None
    base = ModelStore(settings.home).get(adapter.base)
    return Resolved(asked, "adapter", adapter.name, base.name, base, adapter)


def _model(asked: str, key: str, settings: Settings) -> Resolved:
    if "@" in key:  # name@N is a preset's version and nothing else
        raise ModelNotFoundError(f"preset {key.partition('@')[0]} does not exist; see `tailor preset list`")
    store = ModelStore(settings.home)
    cleaned = validate_name(key)
    manifest = store.find(cleaned)
    if manifest is None and cleaned in defaults.EMBEDDED:
        return Resolved(asked, "model", cleaned, cleaned)
    if manifest is None:
        raise ModelNotFoundError(f"{cleaned} is no model, adapter or preset in the store; {store.close_match(cleaned)}"
                                 "see `tailor list`, `tailor adapters list` and `tailor preset list`, or fetch a "
                                 f"model with `tailor pull {cleaned}`")
    return Resolved(asked, "model", manifest.name, manifest.name, manifest)


def stored(found: Resolved, settings: Settings, *, show_progress: bool = False) -> Manifest:
    """The manifest of the model that computes `found`; an embedded default is pulled on first use."""
    return found.manifest or ModelStore(settings.home).ensure(found.model, show_progress=show_progress)


def base_model(name: str | None, settings: Settings, what: str, *, show_progress: bool = False) -> Manifest:
    """`name` as a stored base model for `what` (e.g. "tuning"): a preset or an adapter is a clear error."""
    found = resolve(name, settings)
    if found.kind != "model":
        raise InvalidRequestError(f"{found.name} is a{'n' if found.kind == 'adapter' else ''} {found.kind}; "
                                  f"{what} starts from a stored base model ({found.model})", param="model")
    return stored(found, settings, show_progress=show_progress)
