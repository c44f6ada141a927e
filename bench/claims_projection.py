"""The GPU time of ``study=imagenet_claims``, projected (not measured) from a committed GPU
bench record: per image, the forwards a claims pass costs
(:func:`winft_lightning.stages.claims.forwards_per_image`) times one non-fused ViT-B/16-224
forward, plus the analysis (U, windows, order), over ImageNet-1k's val split on one GPU.

    python -m bench.claims_projection [--bench PATH] [--images 50000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from winft_lightning.stages.claims import forwards_per_image

BENCH = Path(__file__).parent / "results" / "bench_gpu_h100_2026-11-25.json"
ALPHAS = (0.05, 0.1, 0.2)  # conf/study/full.yaml's claims, which study=imagenet_claims keeps
BETAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def project(bench: dict[str, Any], images: int = 50_000, alphas=ALPHAS, betas=BETAS) -> dict:
    """Seconds of one claims pass over ``images`` at B/16-224 on the bench's GPU: every
    forward at the measured non-fused forward time (an upper bound for the fused full net, a
    close one for the masked AWD and DIP nets), plus the measured analysis time."""
    rec = bench["analysis"]["b16_224"]
    forwards = forwards_per_image(alphas, betas)
    per_image = forwards * rec["teacher_forward_nonfused_s_per_image"] + rec["analysis_s_per_image"]
    return {"gpu": bench["machine"]["gpu"], "batch": rec["batch"], "images": images,
            "forwards_per_image": forwards, "seconds_per_image": per_image,
            "minutes": images * per_image / 60}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=BENCH)
    parser.add_argument("--images", type=int, default=50_000)
    args = parser.parse_args()
    p = project(json.loads(args.bench.read_text()), args.images)
    print(f"projected: {p['minutes']:.0f} min for {p['images']:,} images on one {p['gpu']} "
          f"({p['forwards_per_image']} forwards an image at batch {p['batch']}, fp32)")  # fmt: skip


if __name__ == "__main__":
    main()
