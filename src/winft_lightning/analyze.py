"""``python -m winft_lightning.analyze teacher_ckpt=CKPT data=NAME``: the entry point of
:mod:`winft_lightning.stages.analyze`. A run without ``teacher_ckpt`` is refused before the
analysis stack (torch, timm) loads."""

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="conf", config_name="analyze", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "teacher_ckpt"):
        raise SystemExit(
            "analyze: teacher_ckpt is required: teacher_ckpt=<a Lightning .ckpt of our modules, "
            "or a timm weights file with teacher_model.*>"
        )
    from winft_lightning.stages.analyze import run_from_config

    run_from_config(cfg)


if __name__ == "__main__":
    main()
