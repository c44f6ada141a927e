"""Locality probe (issue 33 item 2): does a teacher recipe attend locally AND learn?

Trains N = 64 teachers of the study's shape (experiment fmnist_vit with conf/study/full.yaml's
``claims.teachers`` overrides, but a short budget) through the project's own teacher path
(``stages.teachers.teacher_config`` -> ``stages.cache.ensure_teacher``: the LightningModule and
Trainer a main job uses, cached in the artifact store under ``<root>/outputs/cache``), and
measures each candidate at init (``teacher.max_epochs=0``, the same seed: the project's
untrained-teacher path) and after training:

- per block and head, the mean attention distance (``core.attention_distance``, patches, the
  patch keys renormalised) over the first ``--test`` test images, as a fraction of uniform
  attention over the grid, and how many heads are at or below the 5 x 5 reference (uniform
  attention inside a 5 x 5 neighbourhood: 0.42 of uniform at N = 64);
- top-1 on those same test images (and the training job's own full-test top-1).

    PYTHONPATH=src:. python scripts/probe_locality.py mimetic mimetic_qk2 --epochs 2

One JSON per candidate goes to ``<root>/outputs/locality_probe/``; a markdown row is printed.
A teacher already in the store is reused, not retrained: ``minutes`` is then the measurement's
alone (``fit_seconds`` stays the training job's).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from winft_lightning.core.attention_distance import (
    mean_attention_distance,
    uniform_attention_distance,
)
from winft_lightning.core.capture import iter_block_attention
from winft_lightning.data.datamodule import ShardDataModule
from winft_lightning.models.teacher import load_teacher, teacher_norm
from winft_lightning.stages.cache import ensure_shards, ensure_teacher, ensure_teacher_shards
from winft_lightning.stages.teachers import teacher_config

MIMETIC = "teacher.init=mimetic"
# name -> the teacher overrides on top of the study's recipe (each a Hydra override)
CANDIDATES = {
    "default": [],
    "mimetic": [MIMETIC],
    "mimetic_qk2": [MIMETIC, "teacher.init_options={qk_scale:2.0}"],
    "mimetic_qk3": [MIMETIC, "teacher.init_options={qk_scale:3.0}"],
    "mimetic_qk4": [MIMETIC, "teacher.init_options={qk_scale:4.0}"],
    "mimetic_qk566": [MIMETIC, "teacher.init_options={qk_scale:5.657}"],  # sqrt(head dim 32)
    "mimetic_qk3_lr1e-3": [MIMETIC, "teacher.init_options={qk_scale:3.0}", "optimizer.lr=0.001"],
    "mimetic_qk4_lr1e-3": [MIMETIC, "teacher.init_options={qk_scale:4.0}", "optimizer.lr=0.001"],
    "mimetic_qk566_lr5e-4": [
        MIMETIC,
        "teacher.init_options={qk_scale:5.657}",
        "optimizer.lr=0.0005",
    ],
    # the recipe's lr for everything but the parameters that carry the locality
    # (teacher.param_groups): the position embedding frozen, no weight decay on it
    "mimetic_qk4_pe0": [
        MIMETIC,
        "teacher.init_options={qk_scale:4.0}",
        "teacher.param_groups=[{match:pos_embed,lr_scale:0.0,weight_decay:0.0}]",
    ],
    # ... and the query-key-value weights too at a tenth of the lr, without weight decay
    "mimetic_qk4_attn01": [
        MIMETIC,
        "teacher.init_options={qk_scale:4.0}",
        "teacher.param_groups=[{match:[pos_embed,'blocks.*.attn.qkv.*'],lr_scale:0.1,weight_decay:0.0}]",
    ],
    # issue 33's third family: a learnable 2-D distance bias on the logits (models.distance),
    # timm's init, the recipe's lr; and with the slopes kept from decaying
    "distance": ["teacher.attn_bias=distance"],
    "distance_mimetic_qk4_lr1e-3": [
        "teacher.attn_bias=distance",
        MIMETIC,
        "teacher.init_options={qk_scale:4.0}",
        "optimizer.lr=0.001",
    ],
}


def recipe(epochs: int, train: int) -> list[str]:
    """conf/study/full.yaml's claims.teachers overrides, with a short budget."""
    return [
        "data.num_workers=0",
        f"data.source.limit.train={train}",
        "data.batch_size=128",
        f"teacher.max_epochs={epochs}",
        "callbacks.rich_progress_bar=null",
        "trainer.enable_progress_bar=false",
    ]


@torch.inference_mode()
def measure(ckpt: Path, shards: Path, images: int) -> dict:
    """Per block and head the mean attention distance / uniform, and top-1, over the first
    ``images`` test images of ``shards`` in the teacher's view."""
    model, info = load_teacher(ckpt)
    mean, std = teacher_norm(model, info)
    dm = ShardDataModule(shards, batch_size=250, num_workers=0, img_size=info.img_size,
                         mean=mean, std=std, hflip=False)  # fmt: skip
    grid, prefix = info.grid, info.num_prefix_tokens
    dist, correct, seen = 0.0, 0, 0
    for batch in dm.make_loader("test", rank=0, world_size=1):
        x, y = batch["image"][: images - seen], batch["label"][: images - seen]
        blocks = [mean_attention_distance(a, grid, prefix).sum(0)
                  for a in iter_block_attention(model, x, patches_only=False)]  # fmt: skip
        dist = dist + torch.stack(blocks)  # [l, k] summed over images
        correct += int((model(x).argmax(-1) == y).sum())
        seen += x.shape[0]
        if seen >= images:
            break
    frac = dist / seen / uniform_attention_distance(grid)
    ref5 = uniform_attention_distance(grid, 5) / uniform_attention_distance(grid)
    return {
        "images": seen,
        "top1": 100.0 * correct / seen,
        "fraction": [[round(float(v), 4) for v in row] for row in frac],
        "ref5": round(ref5, 4),
        "heads_le_5x5": [int((row <= ref5).sum()) for row in frac],
    }


def teacher(overrides: list[str], seed: int, root: Path) -> tuple[Path, Path, dict | None]:
    cfg = teacher_config("fmnist_vit", overrides, seed, root)
    shards = ensure_teacher_shards(cfg, ensure_shards(cfg))
    ckpt, row, _ = ensure_teacher(cfg, shards)
    return ckpt, shards, row


def blocks(m: dict) -> str:
    """'mean/min (heads <= 5x5)' per block."""
    return " · ".join(f"{sum(r) / len(r):.2f}/{min(r):.2f} ({n})"
                      for r, n in zip(m["fraction"], m["heads_le_5x5"], strict=True))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", choices=sorted(CANDIDATES))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train", type=int, default=20000, help="train images")
    ap.add_argument("--test", type=int, default=2000, help="the first test images measured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=Path.cwd(), help="paths.root_dir")
    args = ap.parse_args()
    out = args.root / "outputs" / "locality_probe"
    out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        start = time.perf_counter()
        base = [*recipe(args.epochs, args.train), *CANDIDATES[name]]
        ckpt0, shards, _ = teacher([*base, "teacher.max_epochs=0"], args.seed, args.root)
        init = measure(ckpt0, shards, args.test)
        ckpt, shards, row = teacher(base, args.seed, args.root)
        trained = measure(ckpt, shards, args.test)
        minutes = (time.perf_counter() - start) / 60
        res = {"name": name, "overrides": CANDIDATES[name], "epochs": args.epochs,
               "train_images": args.train, "seed": args.seed, "torch": torch.__version__,
               "init": init, "trained": trained, "minutes": round(minutes, 1),
               "job_top1": row and row.get("top1"), "fit_seconds": row and row.get("fit_seconds")}  # fmt: skip
        (out / f"{name}_e{args.epochs}_n{args.train}_s{args.seed}.json").write_text(
            json.dumps(res, indent=2)
        )
        print(f"| {name} | init {init['top1']:.1f} | {blocks(init)} |", flush=True)
        print(f"| {name} | {args.epochs} ep {trained['top1']:.1f} (job {res['job_top1']}) | "
              f"{blocks(trained)} | {minutes:.1f} min |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
