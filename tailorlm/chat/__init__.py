"""Text level: tokenizer, chat templates, incremental detokenization and stop strings."""

from tailorlm.chat.detokenizer import IncrementalDetokenizer
from tailorlm.chat.stop import StopStringMatcher, validate_stops
from tailorlm.chat.template import normalize_messages, render_chat, render_chat_text
from tailorlm.chat.textstream import TextStream
from tailorlm.chat.tokenizer import TextTokenizer, load_tokenizer

__all__ = [
    "IncrementalDetokenizer",
    "StopStringMatcher",
    "TextStream",
    "TextTokenizer",
    "load_tokenizer",
    "normalize_messages",
    "render_chat",
    "render_chat_text",
    "validate_stops",
]
