"""A job's results: the row ``fit_and_test`` writes to ``results.json`` (:func:`results_row`,
from the trainer, the test metrics and the fit's timing) and the main job's report of its rows
(``results.md``, ``results_table.json``, the table printed with the machine each row ran on)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from winft_lightning.lit.callbacks import TrainThroughput
from winft_lightning.runtime.checkpoints import read_checkpoint
from winft_lightning.runtime.machine import describe, summary

# the row's values each logger also gets, as results/<key>
RESULT_KEYS = ("top1", "top5", "eo", "eo_ratio", "images_per_s")


def significant(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, thousands grouped and no exponent: a slow
    run's 0.412 img/s stays 0.412, not 0; 3,082.4 is 3,082."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


COLUMNS = [
    ("name", "run", "{}".format),
    ("top1", "top-1 %", "{:.2f}".format),
    ("top5", "top-5 %", "{:.2f}".format),  # measured only where 5 < the number of classes
    ("eo", "E_O", "{:,.0f}".format),
    ("eo_ratio", "E_O / N²", "{:.3f}".format),
    ("images_per_s", "train img/s", significant),
]


def _measured(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def train_images_per_s(trainer: L.Trainer, callbacks: Iterable[L.Callback]) -> float:
    """Training throughput: the :class:`TrainThroughput` callback's, else the logged metric."""
    images_per_s = float(trainer.callback_metrics.get("train/images_per_s", 0.0))
    for cb in callbacks:
        if isinstance(cb, TrainThroughput) and cb.seconds > 0:
            images_per_s = cb.images_per_s(trainer.world_size)
    return images_per_s


def _best_score_in(path: str) -> float | None:
    """ModelCheckpoint's best score as saved in one of its own checkpoints."""
    ckpt = read_checkpoint(path)
    for key, state in (ckpt.get("callbacks") or {}).items():
        if "ModelCheckpoint" in str(key) and state.get("best_model_score") is not None:
            return float(state["best_model_score"])
    return None


def best_checkpoint(trainer: L.Trainer) -> tuple[str, float]:
    """(the best checkpoint's path or "", its validation top-1 in % or NaN)."""
    best, val_top1 = "", float("nan")
    if trainer.checkpoint_callback is not None:
        best = trainer.checkpoint_callback.best_model_path or ""
        score = trainer.checkpoint_callback.best_model_score
        if score is None and best and Path(best).is_file():
            score = _best_score_in(best)  # ddp_spawn: the callback's state stayed in the child
        val_top1 = 100.0 * float(score) if score is not None else val_top1
    return best, val_top1


def results_row(
    cfg: DictConfig,
    model: L.LightningModule,
    trainer: L.Trainer,
    *,
    name: str,
    tested: dict[str, float],
    fit_seconds: float,
    images_per_s: float,
    best: str,
    val_top1: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The job's ``results.json``: test metrics in %, E_O, throughput, the settings that make
    the run, where it wrote, and the machine it ran on (plus ``extra`` fields)."""
    model_cfg = cfg.model
    n = model.num_patches
    eo = tested.get("test/eo", float("nan"))
    return {
        "name": name,
        "module": type(model).__name__,
        "top1": 100.0 * tested.get("test/top1", float("nan")),
        "top5": 100.0 * tested.get("test/top5", float("nan")),
        "val_top1": val_top1,
        "eo": eo,
        "eo_ratio": eo / n**2,
        "num_patches": n,
        "images_per_s": images_per_s,
        "alpha": model_cfg.get("alpha"),
        "beta": model_cfg.get("beta"),
        "img_size": model_cfg.net.img_size,
        "patch_size": model_cfg.net.patch_size,
        "params": sum(p.numel() for p in model.net.parameters()),
        "seed": cfg.get("seed"),
        "fit_seconds": round(fit_seconds, 2),
        "epochs": trainer.current_epoch,
        "best_ckpt": best,
        "run_dir": str(Path(cfg.paths.output_dir)),
        "machine": describe(),  # the same seeds give other numbers on another CPU (machine.py)
        **(extra or {}),
    }


def results_table(rows: list[dict[str, Any]]) -> tuple[Table, str]:
    """A rich table for the terminal and the same as Markdown: only the columns some row
    measured (no top-5 with 5 classes or fewer), "-" where a row did not."""
    columns = [c for c in COLUMNS if any(_measured(row.get(c[0])) for row in rows)]
    table = Table(title="winft_lightning results (test split)")
    for _, title, _ in columns:
        table.add_column(title, justify="right" if title != "run" else "left")
    md = ["| " + " | ".join(t for _, t, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append(fmt(value) if _measured(value) else "-")
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    return table, "\n".join(md) + "\n"


def machine_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Where each row was measured: one line when every row ran on the same machine (a cached
    teacher may have been trained on another, whose CPU gives other numbers)."""
    described = {row["name"]: summary(row["machine"]) for row in rows if row.get("machine")}
    if len(set(described.values())) == 1:
        return [f"Measured on {next(iter(described.values()))}."]
    return [f"{name}: measured on {line}." for name, line in described.items()]


def write_report(rows: list[dict[str, Any]], run_dir: Path) -> None:
    """``results.md`` and ``results_table.json`` in ``run_dir``, and the table on the terminal."""
    table, md = results_table(rows)
    measured_on = machine_lines(rows)
    (run_dir / "results.md").write_text(md + "\n" + "\n".join(measured_on) + "\n")
    (run_dir / "results_table.json").write_text(json.dumps(rows, indent=2))
    console = Console()
    console.print(table)
    for line in measured_on:
        console.print(line, soft_wrap=True)
    console.print(f"run dir: {run_dir}  (results.json, results.md, checkpoints/, logs)")
