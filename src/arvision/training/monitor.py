"""What a training run shows: progress (a tqdm bar on a terminal, plain lines in a log: ``arvision.progress``), a
JSON-lines log, TensorBoard events when installed (rank 0 only)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from arvision.progress import progress


class Monitor:
    def __init__(self, out_dir: Path, total_steps: int, start_step: int, enabled: bool = True, desc: str = "train",
                 show_bar: bool = True):
        """enabled: this process logs (rank 0); show_bar: report progress (a bar on a terminal, else lines)."""
        self.enabled = enabled
        self.log_path = Path(out_dir) / "log.jsonl"
        self.bar = progress(total=total_steps, initial=start_step, desc=desc, unit="steps",
                            disable=not (enabled and show_bar))
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.tb = None
        self.t0 = time.perf_counter()

    def log(self, step: int, metrics: dict, show: tuple[str, ...] = ("loss",)) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.perf_counter() - self.t0, 3), **metrics}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        self.bar.set_postfix({k: f"{metrics[k]:.4g}" for k in show if k in metrics}, refresh=False)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def write(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
