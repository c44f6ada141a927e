"""``python -m winft_lightning.analyze teacher_ckpt=CKPT data=NAME``: the entry point of
:mod:`winft_lightning.stages.analyze`. A run without ``teacher_ckpt`` is refused before the
analysis stack (torch, timm) loads."""

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("winft_lightning.stages.analyze")


@hydra.main(config_path="conf", config_name="analyze", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "teacher_ckpt"):
        raise SystemExit(
            "analyze: teacher_ckpt is required: teacher_ckpt=<a Lightning .ckpt of our modules, "
            "or a timm weights file with teacher_model.*>"
        )
    run_from_config(cfg)


def run_from_config(cfg: DictConfig) -> None:
    """``python -m winft_lightning.analyze``'s job on its composed ``analyze.yaml`` config."""
    from winft_lightning.data.shards import MANIFEST
    from winft_lightning.runtime import world as worlds
    from winft_lightning.stages.analyze import analyze_shards
    from winft_lightning.stages.prepare import default_out_dir, prepare_shards

    world = worlds.current()
    shards = Path(cfg.shards) if cfg.get("shards") else default_out_dir(cfg)
    if world.is_zero and not (shards / MANIFEST).is_file():
        log.info("analyze: no shard set at %s; preparing it from data.source first", shards)
        prepare_shards(cfg.data.source, shards, progress=bool(cfg.progress))
    world.barrier("analyze/prepared")
    tk = OmegaConf.to_container(cfg.teacher_model, resolve=True) if cfg.get("teacher_model") else {}
    tk = {k: v for k, v in tk.items() if v is not None}
    tk["trust_pickle"] = bool(cfg.get("trust_pickle", False))
    tk["path_option"] = "teacher_ckpt"
    manifest = analyze_shards(
        teacher=cfg.teacher_ckpt,
        shards=shards,
        out_dir=cfg.get("out_dir"),
        alphas=list(cfg.alphas),
        batch_size=int(cfg.batch_size),
        mean=list(cfg.mean) if cfg.get("mean") is not None else None,
        std=list(cfg.std) if cfg.get("std") is not None else None,
        device=str(cfg.device),
        teacher_kwargs=tk,
        encoding=str(cfg.encoding),
        workers=int(cfg.workers),
        progress=bool(cfg.progress),
        world=world,
    )
    if manifest is None:  # a rank other than 0: rank 0 reports
        return
    s = manifest["mask_storage"]
    print(
        f"masks: {manifest['root']}\n"
        f"mask keys {s['mask_bytes_per_image']} B/image vs N x N bit-packed "
        f"{s['bitpacked_mask_bytes_per_image']} B (N={s['num_patches']}): "
        f"{s['ratio_one_bitpacked_mask_to_all_mask_keys']}x smaller"
    )


if __name__ == "__main__":
    main()
