"""What a training run reports: TensorBoard, ``metrics.jsonl``, image grids, a progress bar.

Only global rank 0 reports; on other ranks every method does nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from tasks.images import make_grid, save_png
from tasks.runs.rundir import RunDir, atomic_write, flatten


def _step_of(line: str) -> float:
    """The step a ``metrics.jsonl`` line logged; infinity for a line a kill tore mid-write."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


class Monitor:
    """Reports for one run, from step ``start`` (a resume drops anything logged after it)."""

    def __init__(self, run: RunDir, spec: dict[str, Any], start: int, max_steps: int, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            return
        self.run = run
        # A resumed run re-does the steps after its checkpoint: drop what they logged before.
        self.writer = SummaryWriter(str(run.tensorboard), purge_step=start if start else None)
        kept = [
            line
            for line in (run.metrics.read_text().splitlines() if run.metrics.is_file() else [])
            if _step_of(line) <= start
        ]
        atomic_write(run.metrics, "".join(f"{line}\n" for line in kept).encode())
        self.metrics = open(run.metrics, "a", encoding="utf-8")
        if start == 0:
            self.writer.add_text("spec", f"```json\n{json.dumps(spec, indent=2)}\n```")
            # TensorBoard's hparams take scalars and strings only: lists and nulls go as JSON.
            hparams = {
                key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
                for key, value in flatten(spec).items()
            }
            self.writer.add_hparams(hparams, {}, run_name=".")
        self.bar = tqdm(total=max_steps, initial=start, desc=run.root.name, unit="step", dynamic_ncols=True)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log ``values`` at ``step`` to TensorBoard and ``metrics.jsonl``; show the losses."""
        if not self.enabled:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.metrics.write(json.dumps({"step": step, **values}) + "\n")
        self.metrics.flush()
        self.bar.set_postfix({k.removeprefix("loss/"): f"{v:.4g}" for k, v in values.items() if k.startswith("loss/")})

    def images(self, step: int, name: str, images: Tensor, nrow: int = 8) -> Path | None:
        """Log images (B, C, H, W) in [-1, 1] as a grid, in TensorBoard and as ``samples/<name>-<step>.png``."""
        if not self.enabled:
            return None
        grid = make_grid(images, nrow=min(nrow, images.shape[0]))
        self.writer.add_image(name, grid, step)
        path = self.run.samples / f"{name}-{step:08d}.png"
        save_png(grid, path)
        return path

    def advance(self) -> None:
        """One more step done (the bar shows steps/s and the ETA)."""
        if self.enabled:
            self.bar.update(1)

    def message(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        """Flush and close everything."""
        if self.enabled:
            self.bar.close()
            self.metrics.close()
            self.writer.close()
