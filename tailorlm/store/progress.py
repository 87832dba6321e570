"""Import progress: named stages on a rich spinner (stderr), silent when disabled."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn, DownloadColumn, Progress, SpinnerColumn, Task, TaskID, TextColumn, TimeElapsedColumn,
)
from rich.text import Text


class _BytesColumn(DownloadColumn):
    """Byte counts for byte-counting stages only; plain stages show just the spinner and time."""

    def render(self, task: Task) -> Text:
        return super().render(task) if task.fields.get("counts_bytes") else Text("")


class Stages:
    """One line per stage ("reading GGUF", "dequantizing", ...); `bytes()` adds a byte-counting bar."""

    def __init__(self, title: str, enabled: bool = True) -> None:
        self.title = title
        self._progress = (
            Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _BytesColumn(),
                TimeElapsedColumn(), console=Console(stderr=True),
            )
            if enabled
            else None
        )
        self._current: TaskID | None = None

    def __enter__(self) -> Stages:
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress:
            if exc is None:
                self._finish()
            self._progress.stop()

    def _finish(self) -> None:
        if self._progress and self._current is not None:
            task = self._progress.tasks[self._current]
            self._progress.update(self._current, total=task.total or 1, completed=task.total or 1)
        self._current = None

    def stage(self, name: str) -> None:
        """Start stage `name`, completing the previous one."""
        self._finish()
        if self._progress:
            self._current = self._progress.add_task(f"{self.title}: {name}", total=None)

    def bytes(self, name: str, total: int) -> Callable[[int], None]:
        """Start a stage that counts `total` bytes; returns the advance callback."""
        self._finish()
        if not self._progress:
            return lambda n: None
        self._current = self._progress.add_task(f"{self.title}: {name}", total=total, counts_bytes=True)
        return functools.partial(self._progress.advance, self._current)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' own tqdm bars and warnings while our progress is shown."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # The GGUF dequantizer uses tqdm directly, without the switch above.
    patched = []
    with contextlib.suppress(ImportError):
        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        if hasattr(gguf_utils, "tqdm"):
            patched.append((gguf_utils, gguf_utils.tqdm))
            gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)
    try:
        yield
    finally:
        for module, original in patched:
            module.tqdm = original
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
