"""Checks a preset passes before it is stored: its model, adapter and knowledge bases exist and fit together."""

from __future__ import annotations

from tailorlm.config import Settings
from tailorlm.errors import AlreadyExistsError, InvalidRequestError
from tailorlm.presets.preset import Preset
from tailorlm.presets.store import PresetStore, check_name
from tailorlm.store import AdapterStore, ModelStore


def create_preset(settings: Settings, preset: Preset) -> Preset:
    """Check `preset` (ModelNotFoundError / NotFoundError 404 for what is missing) and store its next version."""
    name = check_name(preset.name)
    models, adapters = ModelStore(settings.home), AdapterStore(settings.home)
    if models.find(name) is not None or adapters.find(name) is not None:
        raise AlreadyExistsError(f"{name} is a model in the store; choose another preset name", param="name")
    if preset.adapter:
        adapter = adapters.get(preset.adapter)
        base = models.get(preset.model)
        if adapter.base != base.name:
            raise InvalidRequestError(f"adapter {adapter.name} is trained over {adapter.base}, not {base.name}",
                                      param="adapter")
        preset = preset.model_copy(update={"adapter": adapter.name, "model": base.name})
    else:
        preset = preset.model_copy(update={"model": models.get(preset.model).name})
    if preset.knowledge:
        from tailorlm.kb import KnowledgeBases
        from tailorlm.kb.filters import check_filter

        kbs = KnowledgeBases(settings)
        for ref in preset.knowledge:
            kbs.get(ref.name)  # 404 when it does not exist
            if ref.filters is not None:
                check_filter(ref.filters)
    return PresetStore(settings.home).add(preset)
