"""``train`` section: training step (forward + backward + SGD) of each module / the ViT step at
B/16 384 (N = 576), batch 32 bf16 on CUDA (vit_base and vit_tiny widths), batch 2 float32 on
CPU (vit_tiny widths), teacher-like windows at alpha 0.1. On CPU also one attention layer's
forward (full fused vs AWD dense vs sparse); on CUDA the ``attention`` section measures that in
depth.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from bench.benchlib import (
    B16_384,
    NO_CPU_BACKWARD,
    SGD,
    STEP_TARGETS,
    TRAIN_BATCH,
    TRAIN_WIDTHS,
    VARIANTS,
    WIDTHS,
    _autocast,
    _grid,
    build_module,
    flex_kernel,
    forward_only,
    local_masks,
    ratio_targets,
    synthetic_batch,
    timeit,
    timeit_interleaved,
    train_step,
)

TUNED = ("awd_sparse", "awd_dip_sparse")  # variants re-run with the attention section's best
TINY_TARGET = ("awd_step_le_0.9x_vit_tiny", ("awd_dense", "awd_sparse", "awd_sparse_tuned"), 0.9)


def _attention_layer(net: dict, masks: dict, batch: int, device: torch.device, repeat: int):
    """One attention layer's forward on ``[B, T, C]`` tokens: timm's fused full attention vs
    AWD with the dense SDPA mask and with the flex ``BlockMask``. The per-batch mask is shared by
    every block, so its construction is timed apart."""
    from winft_lightning import models

    cfg = {k: v for k, v in net.items() if k != "depth"}
    nets = {
        "full_fused": models.build_vit(**cfg, depth=1),
        "awd_dense": models.build_vit(**cfg, depth=1, attn="awd"),
        "awd_sparse": models.build_vit(**cfg, depth=1, attn="awd", sparse=True),
    }
    tokens = 1 + _grid(net)[0] * _grid(net)[1]
    x = torch.randn(batch, tokens, net["embed_dim"], device=device)
    windows = masks["windows"].to(device)
    row: dict = {"tokens": tokens, "batch": batch}

    def layer_fn(vit, inputs) -> Callable[[], None]:
        layer = vit.to(device).eval().blocks[0].attn
        kw = {} if inputs is None else {"inputs": inputs}

        def run() -> None:
            with _autocast(device):
                layer(x, **kw)

        return run

    with torch.inference_mode():
        inputs = {}
        for name in ("awd_dense", "awd_sparse"):
            vit = nets[name].to(device)
            row[f"mask_build_{name[4:]}_s"] = timeit(
                lambda vit=vit: models.net_inputs(vit, windows=windows), repeat
            )
            inputs[name] = models.net_inputs(vit, windows=windows)
            if inputs[name].block_mask is not None:
                row["block_mask_sparsity_pct"] = round(float(inputs[name].block_mask.sparsity()), 2)
        layers = {k: layer_fn(v, inputs.get(k)) for k, v in nets.items()}
        times = timeit_interleaved(layers, repeat)
    row.update({f"{k}_s": t for k, t in times.items()})
    row["speedup_dense"] = row["full_fused_s"] / row["awd_dense_s"]
    row["speedup_sparse"] = row["full_fused_s"] / row["awd_sparse_s"]
    row["ratio"] = max(row["speedup_dense"], row["speedup_sparse"])
    row["ratio_is"] = "full_fused_s / min(awd_dense_s, awd_sparse_s)"
    row["target"] = "AWD attention >= 2x faster than full attention (GPU, B/16 384, alpha 0.1)"
    row["holds"] = row["ratio"] >= 2.0
    print(
        f"train: attention layer full {1e3 * row['full_fused_s']:.1f} ms, AWD dense "
        f"{1e3 * row['awd_dense_s']:.1f} ms, sparse {1e3 * row['awd_sparse_s']:.1f} ms",
        flush=True,
    )
    return row


def _cpu_sparse(variant: str, device: torch.device, variants: dict = VARIANTS) -> bool:
    """True where the variant's training step cannot run (flex has no CPU backward)."""
    return device.type == "cpu" and bool(variants[variant][1].get("sparse"))


def tuned_variants(best: str | None) -> dict:
    """VARIANTS plus ``<v>_tuned`` for the sparse AWD variants with the attention section's best
    (order, block) at N = 576, alpha 0.1 (``best`` like ``timm_b64``); none when it is the
    default order and block or unknown."""
    from bench.sec_attention import ORDERS

    variants = dict(VARIANTS)
    if not best:
        return variants
    order, block = best.rsplit("_b", 1)
    if order == "prefix_last" and block == "128":
        return variants
    qb, _, kb = block.partition("x")
    size = int(qb) if not kb else (int(qb), int(kb))
    for v in TUNED:
        kind, options = VARIANTS[v]
        variants[f"{v}_tuned"] = (kind, {**options, "tile": ORDERS[order], "block_size": size})
    return variants


def _variant_times(
    net: dict, data: dict, device: torch.device, repeat: int, variants: dict
) -> dict:
    """Train-step seconds of every variant, interleaved, ratios to ViT; on CPU also the
    forward-only seconds (the sparse path has no CPU backward)."""
    modules = {v: build_module(v, net, device, variants) for v in variants}
    forward = {}
    if device.type == "cpu":
        forward = timeit_interleaved(
            {v: forward_only(m, data, device) for v, m in modules.items()}, repeat
        )
    train = timeit_interleaved(
        {
            v: train_step(m, data, device)
            for v, m in modules.items()
            if not _cpu_sparse(v, device, variants)
        },
        repeat,
    )
    steps = {}
    for v in variants:
        step = train.get(v)
        steps[v] = {
            "options": variants[v][1],
            "train_step_s": step,
            **({"train_step_null_reason": NO_CPU_BACKWARD} if step is None else {}),
            "train_ratio_to_vit": None if step is None else step / train["vit"],
        }
        if forward:
            steps[v]["forward_s"] = forward[v]
            steps[v]["forward_ratio_to_vit"] = forward[v] / forward["vit"]
        print(
            f"train: {v}: step {'-' if step is None else f'{1e3 * step:.1f} ms'}"
            + (f", forward {1e3 * forward[v]:.1f} ms" if forward else ""),
            flush=True,
        )
    return steps


def _step_targets(steps: dict, width: str) -> dict:
    """Each target on the best measured train-step ratio of its variants, plus every ratio."""
    targets = dict(STEP_TARGETS)
    if width == "vit_tiny":
        targets[TINY_TARGET[0]] = TINY_TARGET[1:]
    ratios = {v: row["train_ratio_to_vit"] for v, row in steps.items()}
    out = ratio_targets(ratios, targets, "train step")
    for row in out.values():
        row["target"] += f" (B/16 384, alpha 0.1, {width} widths)"
    return out


def train_section(device: torch.device, opts: argparse.Namespace) -> dict:
    """Training step per module / ViT step at B/16 384 (N = 576) for each width."""
    batch = opts.train_batch or TRAIN_BATCH[device.type]
    repeat = opts.repeat
    variants = tuned_variants(getattr(opts, "sparse_best", None))
    out: dict = {
        "batch": batch,
        "precision": "bf16 autocast" if device.type == "cuda" else "float32",
        "optimizer": {"name": "SGD", **SGD},
        "repeat": repeat,
        "sparse_tuned_from": getattr(opts, "sparse_best", None),
    }
    masks, window_info = local_masks(batch, _grid(B16_384))
    out["windows"] = window_info
    print(f"train: local windows {window_info}", flush=True)
    with flex_kernel(device) as kernel:
        out["flex"] = kernel
        for width in TRAIN_WIDTHS[device.type]:
            net = {**B16_384, **WIDTHS[width]}
            data = synthetic_batch(batch, net, masks, device)
            row: dict = {"net": net}
            if device.type == "cpu":
                row["attention_layer"] = _attention_layer(net, masks, batch, device, 2 * repeat)
            row["steps"] = _variant_times(net, data, device, repeat, variants)
            row["targets"] = _step_targets(row["steps"], width)
            out[width] = row
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return out
