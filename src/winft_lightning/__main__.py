"""``python -m winft_lightning [experiment=NAME] [overrides]``: the main job.

Resolves the run's prerequisites (shards -> teacher -> masks, cached), fits the model, tests
its best checkpoint, writes ``results.json`` and prints a results table (with the teacher's
row beside a masked model's)."""

from __future__ import annotations

import json
import logging
import math
import traceback
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from winft_lightning import pipeline
from winft_lightning.runtime import world as worlds
from winft_lightning.runtime.machine import summary
from winft_lightning.stages.train import (
    destroy_process_group,
    fit_and_test,
    module_class,
    validate_config,
)

log = logging.getLogger("winft_lightning")

COLUMNS = [
    ("name", "run", "{}"),
    ("top1", "top-1 %", "{:.2f}"),
    ("top5", "top-5 %", "{:.2f}"),
    ("eo", "E_O", "{:,.0f}"),
    ("eo_ratio", "E_O / N²", "{:.3f}"),
    ("images_per_s", "train img/s", "{:.0f}"),
]


def results_table(rows: list[dict[str, Any]]) -> tuple[Table, str]:
    """A rich table for the terminal and the same as Markdown."""
    table = Table(title="winft_lightning results (test split)")
    for _, title, _ in COLUMNS:
        table.add_column(title, justify="right" if title != "run" else "left")
    md = ["| " + " | ".join(t for _, t, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            value = row.get(key)
            ok = value is not None and not (isinstance(value, float) and math.isnan(value))
            cells.append(fmt.format(value) if ok else "-")
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


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    validate_config(cfg)
    world = worlds.current()
    run_dir = Path(cfg.paths.output_dir)
    done = run_dir / "results.json"
    if cfg.get("skip_if_done") and world.share("skip", done.is_file()):
        log.info("already done, skipping: %s", done)
        return [json.loads(done.read_text())]
    L.seed_everything(cfg.seed, workers=True)
    cls = module_class(cfg.model)
    shards = pipeline.ensure_shards(cfg)
    rows = []
    data_root, teacher = shards, None
    if cls.uses_masks:
        teacher_shards = pipeline.ensure_teacher_shards(cfg, shards)
        teacher, teacher_row, teacher_sha = pipeline.ensure_teacher(cfg, teacher_shards)
        data_root = pipeline.ensure_masks(cfg, teacher, teacher_sha, shards)
        if cfg.get("compare_teacher", True) and teacher_row is not None:
            rows.append(teacher_row)
    L.seed_everything(cfg.seed, workers=True)  # the teacher may have reseeded
    # what the masks came from, for figures and audits
    extra = {"teacher_ckpt": str(teacher), "mask_root": str(data_root)} if teacher else None
    row = fit_and_test(cfg, data_root, extra=extra)
    rows.append(row)
    destroy_process_group()  # a torchrun world's group outlives the teacher's run (train.py)
    if not world.is_zero:
        return rows
    table, md = results_table(rows)
    measured_on = machine_lines(rows)
    (run_dir / "results.md").write_text(md + "\n" + "\n".join(measured_on) + "\n")
    (run_dir / "results_table.json").write_text(json.dumps(rows, indent=2))
    console = Console()
    console.print(table)
    for line in measured_on:
        console.print(line, soft_wrap=True)
    console.print(f"run dir: {run_dir}  (results.json, results.md, checkpoints/, logs)")
    return rows


def _record_failure(cfg: DictConfig, err: BaseException) -> None:
    """In a multirun one failing job must not stop the others: keep its error beside it."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    failure = {
        "name": cfg.get("task_name"),
        "status": "failed",
        "error": f"{type(err).__name__}: {err}",
        "traceback": traceback.format_exc(),
    }
    (run_dir / "failed.json").write_text(json.dumps(failure, indent=2))
    log.error("job failed (recorded in %s): %s", run_dir / "failed.json", failure["error"])


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        rows = run(cfg)
    except Exception as err:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        _record_failure(cfg, err)
        return None
    metric = cfg.get("optimized_metric")  # e.g. val/top1 -> the row's val_top1
    value = rows[-1].get(metric.replace("/", "_")) if metric and rows else None
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
