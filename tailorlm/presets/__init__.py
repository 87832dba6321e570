"""Presets, our Modelfile: a named, versioned model = base model + adapter + system prompt + defaults + knowledge."""

from tailorlm.presets.preset import GENERATION_DEFAULTS, KnowledgeRef, Preset
from tailorlm.presets.store import PresetStore, split_ref

__all__ = ["GENERATION_DEFAULTS", "KnowledgeRef", "Preset", "PresetStore", "split_ref"]
