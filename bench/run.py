"""``make bench``: every stage against its limit, ratios measured in one run, one JSON file.

    python bench/run.py [--sections analysis,train,overhead,data,memory] [--out PATH] [--quick]

Sections (each records absolute times and the ratio the target is stated on):
  analysis  U + AWD windows (5 alphas) + DIP order per image vs (a) the softmax(QK^T) of the
            12 blocks it analyses, (b) the teacher's own non-fused forward; B/16 at 224 and 384.
  train     training step (forward + backward) of each module / the ViT step, dense and sparse.
  overhead  ViTModule in a real Trainer vs a plain timm + torch loop (same model, data, batch).
  data      shard loader images/s vs the training step's consumption at the same batch.
  memory    peak memory per module at the same batch.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from winft_lightning import interactions as I

ALPHAS = (0.025, 0.05, 0.1, 0.2, 0.5)


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of ``fn`` (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def analysis_section(device: torch.device, batch: int, repeat: int) -> dict:
    """Per-image analysis cost at ViT-B/16 geometry (l = 12, k = 12, head dim 64)."""
    return {f"b16_{img}": _analysis_at(img, device, batch, repeat) for img in (224, 384)}


def _analysis_at(img: int, device: torch.device, batch: int, repeat: int) -> dict:
    import timm

    from winft_lightning.capture import unfused_attention

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

    def analysis() -> None:
        u = I.uncertainty_map(iter(maps))
        for alpha in ALPHAS:
            I.awd_windows(u, alpha, grid)
        I.dip_order(u)

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
        "target": "ratio < 1.0",
    }
    print(
        f"analysis B/16@{img} (N={n}): {1e3 * t_analysis / batch:.1f} ms/img; "
        f"attention maps {1e3 * t_attn / batch:.1f} ms/img (ratio {t_analysis / t_attn:.2f}); "
        f"non-fused forward {1e3 * t_forward / batch:.1f} ms/img (ratio {t_analysis / t_forward:.2f})",
        flush=True,
    )
    return row


SECTIONS = {"analysis": analysis_section}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--out", default=None)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    result = {"machine": machine(), "device": str(device)}
    for name in args.sections.split(","):
        if name not in SECTIONS:
            sys.exit(f"unknown section {name!r}; choose from {sorted(SECTIONS)}")
        start = time.perf_counter()
        result[name] = SECTIONS[name](device, args.batch, args.repeat)
        result[name]["section_seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.out or f"outputs/bench/bench_{device.type}_{time.strftime('%Y-%m-%d')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
