"""What the local family's distance bias (``attn_bias=distance``, models/distance.py) costs a
teacher's training step (through ``core.biased_attention`` where the slopes train on the CPU):
one training step (forward, backward, AdamW) of a study's teacher net on
random images, the default net against the local one, and the local one with its slopes frozen
(no gradient reaches the float ``attn_mask``). The median of ``--steps`` timed steps after two
warm-up steps, the arms interleaved round by round, on ``--threads`` torch threads.

    python -m bench.distance_cost [--shape n196] [--steps 6] [--rounds 3] [--threads 1]

The shapes are the studies' teachers: ``n64`` (conf/study/full.yaml: 32 px, patch 4, depth 6,
3 heads, batch 128) and ``n196`` (paper_grid.yaml: 28 px, patch 2, depth 4, 6 heads, batch 64).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from bench.benchlib import timeit_interleaved
from winft_lightning.models.vit import build_vit

SHAPES = {
    "n64": (dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3), 128),
    "n196": (dict(img_size=28, patch_size=2, embed_dim=96, depth=4, num_heads=6), 64),
}
ARMS = ("default", "distance", "distance_frozen_slopes")


def arm_step(arm: str, shape: str):
    """``(model, step)``: ``arm``'s net at ``shape`` and a closure that runs one training step
    of it on fixed inputs."""
    net, batch = SHAPES[shape]
    torch.manual_seed(0)
    bias = "none" if arm == "default" else "distance"
    model = build_vit("vit_tiny_patch16_224", num_classes=10, attn_bias=bias, **net)
    if arm == "distance_frozen_slopes":
        for name, p in model.named_parameters():
            if name.endswith("distance_slope"):
                p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    x = torch.randn(batch, 3, net["img_size"], net["img_size"])
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return model, step


def measure(shape: str, steps: int, rounds: int) -> dict:
    """Seconds a step per arm (median over rounds of each round's mean, the rounds interleaved
    by :func:`~bench.benchlib.timeit_interleaved`) and the ratios to the default arm."""
    fns = {arm: arm_step(arm, shape)[1] for arm in ARMS}
    for fn in fns.values():
        fn(), fn()  # warm-up
    rounds_of = {arm: (lambda fn=fn: [fn() for _ in range(steps)]) for arm, fn in fns.items()}
    per_round = timeit_interleaved(rounds_of, repeat=rounds, warmup=0)
    med = {arm: seconds / steps for arm, seconds in per_round.items()}
    return {"shape": shape, "threads": torch.get_num_threads(), "seconds_per_step": med,
            "ratio_to_default": {arm: med[arm] / med["default"] for arm in ARMS}}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="n196")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.shape, args.steps, args.rounds), indent=2))


if __name__ == "__main__":
    main()
