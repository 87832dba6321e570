"""Uploaded files (OpenAI's Files API), shared by fine-tuning and, later, knowledge bases."""

from tailorlm.files.store import PURPOSES, FileStore, StoredFile

__all__ = ["PURPOSES", "FileStore", "StoredFile"]
