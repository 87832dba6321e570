"""The OpenAI-compatible HTTP server: a thin shell over runtime and engine."""

from tailorlm.server.app import build_app

__all__ = ["build_app"]
