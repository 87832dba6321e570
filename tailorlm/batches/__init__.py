"""Batches (OpenAI's Batch API): an uploaded JSONL file of requests, checked up front, run line by line later."""

from tailorlm.batches.input import ENDPOINTS, InputLine, LineError, read_input
from tailorlm.batches.store import BatchRecord, BatchStore, LineResult

__all__ = ["ENDPOINTS", "BatchRecord", "BatchStore", "InputLine", "LineError", "LineResult", "read_input"]
