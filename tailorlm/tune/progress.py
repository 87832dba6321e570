"""The training progress bar: step, loss, tokens/s and time left (rich), or nothing when disabled."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tailorlm.tune.trainer import StepMetrics


class TrainProgress:
    """Context manager; `update` after each step, `note` prints a line above the bar."""

    def __init__(self, total_steps: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, disable=not enabled, transient=False,
        )
        self.task = self.bar.add_task("train", total=total_steps, loss="-", speed="-")

    def __enter__(self) -> TrainProgress:
        if self.enabled:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()

    def start_at(self, step: int) -> None:
        """A resumed run starts its bar at the checkpoint's step (time left counts from here)."""
        self.bar.update(self.task, completed=step)
        self.bar.reset(self.task, completed=step, loss="-", speed="-")

    def update(self, m: StepMetrics) -> None:
        self.bar.update(self.task, completed=m.step, loss=f"{m.train_loss:.3f}", speed=f"{m.tokens_per_second:.0f}")

    def note(self, text: str) -> None:
        if self.enabled:
            self.bar.console.print(text)
