"""Sentence embeddings: the default model (all-MiniLM-L6-v2) and any sentence-transformers folder."""

from tailorlm.embeddings.batcher import Batcher
from tailorlm.embeddings.model import EmbeddingModel, Pipeline
from tailorlm.embeddings.registry import EmbeddingModels, packaged_folder

__all__ = ["Batcher", "EmbeddingModel", "EmbeddingModels", "Pipeline", "packaged_folder"]
