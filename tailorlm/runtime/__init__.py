"""Ties the layers together for callers (CLI now, server later): a stored model opened as
engine + tokenizer, and text generation streamed from it."""

from tailorlm.runtime.model import OpenModel, open_model
from tailorlm.runtime.session import ChatSession
from tailorlm.runtime.textgen import (Completion, TextAssembler, TextDelta, chat_prompt, complete_all,
                                     stream_text)

__all__ = ["ChatSession", "OpenModel", "open_model", "Completion", "TextAssembler", "TextDelta", "chat_prompt", "complete_all",
           "stream_text"]
