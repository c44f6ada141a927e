"""``python -m winft_lightning.study [study=quick|claims] [recompute=<report dir>]``: the
paper's study at small scale (:func:`winft_lightning.stages.study_parts.run_parts`: its sweeps,
SPEC 9's training-free claims on K cached teachers, the report and figures), or
``recompute=``: the report rebuilt from its saved records
(:mod:`winft_lightning.stages.recompute`)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from winft_lightning.runtime.threads import set_wait_policy
from winft_lightning.stages.recompute import check_recompute, recompute

# The training stack (Lightning, timm) is imported where a part trains or measures teachers:
# ``recompute=`` rebuilds reports from saved records without it, in a second instead of ten.

__all__ = ["main", "recompute"]


@hydra.main(version_base="1.3", config_path="conf", config_name="study")
def main(cfg: DictConfig) -> None:
    if cfg.get("recompute"):
        check_recompute(Path(cfg.recompute).expanduser(), Path(cfg.paths.output_root) / "recompute")
        return
    # before the training stack loads torch: libgomp reads its wait policy once, at load
    set_wait_policy(cfg.study.get("omp_wait_policy"))
    from winft_lightning.stages.study_parts import run_parts

    print(run_parts(cfg).read_text())


if __name__ == "__main__":
    main()
