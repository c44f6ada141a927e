"""``claims`` section: the training-free claims pass (``stages.claims.collect_claims``) per image,
C3's DIP forwards on the kept patches' tokens (``models.dropped``, the default) against the
dense network over all N patches, timed in alternating rounds in one run, at both study grids:
N = 64 (the claims study's teacher, 32 px, patch 4, width 96, depth 6, 3 heads) and N = 196
(the paper grid's, 28 px, patch 2, width 96, depth 4, 6 heads). The teacher is untrained (a
pass's cost does not depend on its weights); the images are digits shards from
``prepare_shards``, resized to the teacher's view as the pass does. Target: the pass at least
2x faster per image (issue 36)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench.benchlib import DIGITS_YAML, FMNIST_NET, timeit_interleaved

GRIDS = {
    "n64": (FMNIST_NET, 200),
    "n196": ({**FMNIST_NET, "img_size": 28, "patch_size": 2, "depth": 4, "num_heads": 6}, 100),
}
TARGET = 2.0


def _shards(tmp: Path, images: int) -> Path:
    from omegaconf import OmegaConf

    from winft_lightning.stages.prepare import prepare_shards

    cfg = OmegaConf.load(DIGITS_YAML)
    cfg.source.limit = {"train": 64, "val": 16, "test": images}
    prepare_shards(cfg.source, tmp / "shards", progress=False)
    return tmp / "shards"


def _grid(tmp: Path, net: dict, images: int, device: torch.device, repeat: int) -> dict:
    from winft_lightning.models.teacher import save_untrained
    from winft_lightning.stages.claims import collect_claims, forwards_per_image

    torch.manual_seed(0)
    ckpt = save_untrained(
        {"_target_": "winft_lightning.lit.modules.ViTModule", "net": net}, tmp / "teacher.ckpt"
    )
    shards = _shards(tmp, images)
    runs = {
        how: (lambda how=how: collect_claims(
            ckpt, shards, limit=images, batch_size=images, device=device.type, dip_forward=how))
        for how in ("dense", "kept")
    }  # fmt: skip
    seconds = timeit_interleaved(runs, repeat=repeat, warmup=0)
    grid = (net["img_size"] // net["patch_size"],) * 2
    return {
        "net": net,
        "N": grid[0] * grid[1],
        "images": images,
        "forwards_per_image": forwards_per_image((0.05, 0.1, 0.2), [b / 10 for b in range(1, 10)]),
        "dense_s_per_image": seconds["dense"] / images,
        "kept_s_per_image": seconds["kept"] / images,
        "speedup": seconds["dense"] / seconds["kept"],
        "target": TARGET,
        "meets_target": seconds["dense"] / seconds["kept"] >= TARGET,
    }


def claims_section(device: torch.device, opts: argparse.Namespace) -> dict:
    """Seconds per image of the whole pass (teacher load and network builds included), dense vs
    kept-token DIP forwards, median of ``repeat`` alternating rounds, per grid."""
    repeat = 1 if opts.quick else 2
    out: dict = {"threads": torch.get_num_threads()}
    for name, (net, images) in GRIDS.items():
        with tempfile.TemporaryDirectory(prefix=f"bench_claims_{name}_") as tmp:
            out[name] = _grid(Path(tmp), net, 20 if opts.quick else images, device, repeat)
    return out
