"""Stored Responses (OpenAI's Responses API): what a later request continues from with previous_response_id."""

from tailorlm.responses.store import ResponseStore, StoredResponse

__all__ = ["ResponseStore", "StoredResponse"]
