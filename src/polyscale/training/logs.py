"""Metrics to ``metrics.csv`` and TensorBoard (main process only)."""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ["step", "loss", "lr", "grad_norm", "samples_per_s"]


class MetricsLogger:
    """Appends rows to ``output_dir/metrics.csv`` and scalars ``train/<name>`` to ``output_dir/tb``.

    On resume from step ``k`` the rows with ``step > k`` (written after that checkpoint by an interrupted run)
    are dropped and TensorBoard purges them too, so the logs tell the history of the weights actually kept.
    A logger with ``enabled=False`` (non-main processes) does nothing.
    """

    def __init__(self, output_dir: Path, *, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / "metrics.csv"
        rows = []
        if resume_step > 0 and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        from torch.utils.tensorboard import SummaryWriter  # imported here: only the main process needs it

        # purge_step hides events at steps >= resume_step left by an earlier (crashed or replaced) run
        self.writer = SummaryWriter(str(output_dir / "tb"), purge_step=resume_step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One CSV row (columns :data:`COLUMNS`, blanks for missing ones) and one scalar per metric."""
        if not self.enabled or self.writer is None:  # the writer is None exactly when disabled
            return
        row = {"step": step, **{k: f"{metrics[k]:.6g}" for k in COLUMNS[1:] if k in metrics}}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(row)
        for key, value in metrics.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
