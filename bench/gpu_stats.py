"""A Lightning callback for measured runs of the CLI (``python -m bench.headline``): training
step times and peak CUDA memory of each fit, appended as one JSON line to ``path``.

    python -m winft_lightning ... +callbacks.gpu_stats._target_=bench.gpu_stats.GpuStepStats \
        +callbacks.gpu_stats.path=/tmp/stats.jsonl      # from the repository root

Step time: from ``on_train_batch_start`` (the batch is loaded) to ``on_train_batch_end`` after a
CUDA synchronisation, summed over the batches after ``warmup``; loading and validation are left
out (the CLI's own ``images_per_s`` in results.json includes loading). Peak memory: the
allocator's peak from the start of fit (``max_memory_allocated`` / ``max_memory_reserved``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch


class GpuStepStats(L.Callback):
    def __init__(self, path: str, warmup: int = 10) -> None:
        self.path = Path(path)
        self.warmup = warmup
        self.batches = 0
        self.timed = 0
        self.seconds = 0.0
        self.images = 0
        self._start = 0.0
        self._fit_start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.batches += 1
        if self.batches > self.warmup:
            self.seconds += time.perf_counter() - self._start
            self.timed += 1
            self.images += int(batch["image"].shape[0])

    def on_train_end(self, trainer, pl_module) -> None:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
        accumulate = int(trainer.accumulate_grad_batches)
        per_s = self.timed / self.seconds if self.seconds else None
        row = {
            "module": type(pl_module).__name__,
            "strategy": type(trainer.strategy).__name__,
            "world_size": trainer.world_size,
            "precision": str(trainer.precision),
            "micro_batches": self.batches,
            "optimizer_steps": int(trainer.global_step),
            "accumulate_grad_batches": accumulate,
            "timed_micro_batches": self.timed,
            "step_seconds": self.seconds,
            "micro_batches_per_s": per_s,
            "optimizer_steps_per_s": None if per_s is None else per_s / accumulate,
            "images_per_s_step_only": self.images / self.seconds if self.seconds else None,
            "fit_train_seconds": time.perf_counter() - self._fit_start,
            "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
