"""``analysis`` section: U + AWD windows for the analyze config's alphas + DIP order per image,
vs (a) the softmax(QK^T) of the 12 blocks it analyzes and (b) the teacher's own non-fused
forward, at ViT-B/16 224 (N = 196) and 384 (N = 576); plus the whole per-batch analysis
(``analyze.analyze_split``: teacher forward with attention capture, U, windows, DIP order, copy
to host) in images/s and the projected time for ImageNet-1k's 1,281,167 training images on one
device and on 8 (linear scaling, decoding and shard writing not included).
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.benchlib import ANALYZE_YAML, _sync, timeit
from winft_lightning.core import interactions as ia

IMAGENET_TRAIN = 1_281_167


def _alphas() -> list[float]:
    from omegaconf import OmegaConf

    return [float(a) for a in OmegaConf.load(ANALYZE_YAML).alphas]


def analysis_section(device: torch.device, opts: argparse.Namespace) -> dict:
    """Per-image analysis cost at ViT-B/16 geometry (l = 12, k = 12, head dim 64)."""
    batch = opts.batch or (64 if device.type == "cuda" else 2)
    out = {"alphas": _alphas()}
    for img in (224, 384):
        row = _analysis_at(img, device, batch, opts.repeat)
        if device.type == "cuda":
            row["end_to_end"] = _end_to_end(img, device, batch, opts)
        out[f"b16_{img}"] = row
    return out


def _end_to_end(img: int, device: torch.device, batch: int, opts: argparse.Namespace) -> dict:
    """images/s of ``analyze_split`` (random ViT-B/16 teacher, as the pipeline runs it: float32)
    over CPU batches; TF32 matmuls beside it."""
    import timm

    from winft_lightning.stages.analyze import analyze_split

    model = timm.create_model(f"vit_base_patch16_{img}", pretrained=False).to(device).eval()
    grid = (img // 16, img // 16)
    batches = 2 if opts.quick else 4
    g = torch.Generator().manual_seed(0)
    loader = [
        {
            "image": torch.randn(batch, 3, img, img, generator=g),
            "key": [str(i) for i in range(batch)],
        }
        for _ in range(batches)
    ]
    out = {"batch": batch, "batches": batches, "alphas": _alphas()}
    for name, tf32 in (("float32", False), ("tf32", True)):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            for _ in analyze_split(model, loader[:1], out["alphas"], grid, device):
                pass  # warm-up
            _sync()
            start = time.perf_counter()
            for _ in analyze_split(model, loader, out["alphas"], grid, device):
                pass
            _sync()
            rate = batches * batch / (time.perf_counter() - start)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        out[f"{name}_images_per_s"] = rate
        out[f"{name}_imagenet_1k_hours_1_gpu"] = IMAGENET_TRAIN / rate / 3600
        out[f"{name}_imagenet_1k_hours_8_gpus"] = IMAGENET_TRAIN / rate / 3600 / 8
        print(
            f"analysis end-to-end B/16@{img} ({name}): {rate:.0f} img/s, ImageNet-1k "
            f"{IMAGENET_TRAIN / rate / 3600:.2f} h on 1 GPU, {IMAGENET_TRAIN / rate / 3600 / 8:.2f} h on 8",
            flush=True,
        )
    out["projection"] = "1,281,167 images / measured img/s; 8 GPUs = 1 GPU / 8 (data parallel)"
    del model
    torch.cuda.empty_cache()
    return out


def _analysis_at(img: int, device: torch.device, batch: int, repeat: int) -> dict:
    import timm

    from winft_lightning.core.capture import unfused_attention

    grid = (img // 16, img // 16)
    n = grid[0] * grid[1]
    t = n + 1
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(batch, 12, t, 64, generator=g).to(device)
    k = torch.randn(batch, 12, t, 64, generator=g).to(device)
    scale = 64**-0.5

    def attention_maps() -> list[torch.Tensor]:
        return [((q @ k.transpose(-2, -1)) * scale).softmax(-1) for _ in range(12)]

    maps = [m[:, :, 1:, 1:].contiguous() for m in attention_maps()]
    alphas = _alphas()

    def analysis() -> None:
        u = ia.uncertainty_map(iter(maps))
        for alpha in alphas:
            ia.awd_windows(u, alpha, grid)
        ia.dip_order(u)

    t_attn = timeit(attention_maps, repeat)
    t_analysis = timeit(analysis, repeat)
    model = timm.create_model(f"vit_base_patch16_{img}", pretrained=False).to(device).eval()
    images = torch.randn(batch, 3, img, img, device=device)

    def forward() -> None:
        with torch.inference_mode(), unfused_attention(model):
            model(images)

    t_forward = timeit(forward, max(2, repeat // 2))
    row = {
        "N": n,
        "batch": batch,
        "analysis_s_per_image": t_analysis / batch,
        "attention_softmax_qk_s_per_image": t_attn / batch,
        "teacher_forward_nonfused_s_per_image": t_forward / batch,
        "ratio_analysis_to_attention": t_analysis / t_attn,
        "ratio_analysis_to_forward": t_analysis / t_forward,
        "images_per_s": batch / t_analysis,
        "target": "ratio < 1.0",
    }
    print(
        f"analysis B/16@{img} (N={n}): {1e3 * t_analysis / batch:.1f} ms/img; "
        f"attention maps {1e3 * t_attn / batch:.1f} ms/img (ratio {t_analysis / t_attn:.2f}); "
        f"non-fused forward {1e3 * t_forward / batch:.1f} ms/img (ratio {t_analysis / t_forward:.2f})",
        flush=True,
    )
    return row
