"""Knowledge bases: files extracted, chunked, embedded and indexed for hybrid search (OpenAI's vector stores)."""

from tailorlm.kb.store import Hit, IngestResult, KbFile, KnowledgeBase, KnowledgeBases

__all__ = ["Hit", "IngestResult", "KbFile", "KnowledgeBase", "KnowledgeBases"]
