"""Uploaded files (OpenAI's Files API), shared by fine-tuning jobs and knowledge bases (vector stores)."""

from tailorlm.files.store import PURPOSES, UPLOAD_PURPOSES, FileStore, StoredFile, Upload, check_purpose

__all__ = ["PURPOSES", "UPLOAD_PURPOSES", "FileStore", "StoredFile", "Upload", "check_purpose"]
