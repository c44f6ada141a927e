"""``python -m winft_lightning [experiment=NAME] [overrides]``: the main job.

Checks the config (:mod:`.stages.validate`), resolves the run's prerequisites (shards ->
teacher -> masks, cached: :mod:`.pipeline`), fits the model and tests its best checkpoint
(:mod:`.stages.train`), and writes and prints the results table with the teacher's row beside a
masked model's (:mod:`.stages.results`)."""

from __future__ import annotations

from winft_lightning.runtime.world import refuse_bad_launch

if __name__ == "__main__":  # before the heavy imports: a wrong sbatch script stops in a second
    refuse_bad_launch()

import json
import logging
import traceback
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from winft_lightning import pipeline
from winft_lightning.runtime import world as worlds
from winft_lightning.stages.results import write_report
from winft_lightning.stages.train import destroy_process_group, fit_and_test
from winft_lightning.stages.validate import module_class, validate_config

log = logging.getLogger("winft_lightning")


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    validate_config(cfg)
    world = worlds.current()
    run_dir = Path(cfg.paths.output_dir)
    done = run_dir / "results.json"
    if cfg.get("skip_if_done") and world.share("skip", done.is_file()):
        log.info("already done, skipping: %s", done)
        return [json.loads(done.read_text())]
    L.seed_everything(cfg.seed, workers=True)
    ready = pipeline.prerequisites(cfg, module_class(cfg.model).uses_masks)
    rows = []
    if cfg.get("compare_teacher", True) and ready.teacher_row is not None:
        rows.append(ready.teacher_row)
    L.seed_everything(cfg.seed, workers=True)  # the teacher may have reseeded
    # what the masks came from, for figures and audits
    extra = None
    if ready.teacher is not None:
        extra = {"teacher_ckpt": str(ready.teacher), "mask_root": str(ready.data_root)}
    rows.append(fit_and_test(cfg, ready.data_root, extra=extra))
    destroy_process_group()  # a torchrun world's group outlives the teacher's run (train.py)
    if world.is_zero:
        write_report(rows, run_dir)
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
