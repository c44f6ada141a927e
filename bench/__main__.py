"""``make bench``: every stage against its limit, ratios measured in one run, one JSON file.

    python -m bench [--sections attention,analysis,train,overhead,data,loader,memory,claims,
                               teacher] [--out PATH] [--update PATH] [--quick]

Sections (each records absolute times and the ratio its target is stated on; modules of this
package, ``bench.sec_<name>``, shared pieces in ``bench.benchlib``):
  attention one attention layer's core fwd + bwd at N = 576 and 784 (GPU): dense SDPA flash vs
            AWD dense mask vs FlexAttention block-sparse per token order and block size; block
            density; BlockMask build cost beside the kernel (CPU: densities and build cost only).
  analysis  U + AWD windows (the analyze config's alphas) + DIP order per image vs the softmax
            maps and the teacher's forward; on GPU also analyze_split images/s and the
            ImageNet-1k projection.
  train     training step of each module / the ViT step at B/16 384, dense and sparse paths
            (GPU: vit_base and vit_tiny widths, batch 32, bf16; the sparse AWD variants also
            with the attention section's best order and block size).
  overhead  ViTModule in a real Trainer vs a plain timm + torch loop (same model, data, batch).
  data      shard loader images/s vs the training step's consumption at the same batch.
  loader    the training loader's images per core-second on ImageNet-sized JPEGs (scikit-image
            photos) at 224 and 384, with and without masks, per worker and per process; the
            loader cores one H100 needs per recipe (shard sets cached in outputs/bench/cache).
  memory    peak memory of one training step per module at the same batch.
  claims    the training-free claims pass per image at N = 64 and 196: C3's DIP forwards on the
            kept patches' tokens vs the dense network (target >= 2x).
  teacher   the study's teachers (N = 64 and N = 196 recipes) in a real Trainer on the study's
            Fashion-MNIST shards, images/s: as before (the runtime's OpenMP wait policy) vs
            the study's study.omp_wait_policy, torch.compile and one thread; warm-up apart,
            logits against eager's (CPU; process pairs, arms interleaved inside each).

On CPU the B/16 geometry (384 px, N = 576) runs with vit_tiny widths and batch 2 so that the
whole bench fits in minutes; ``--quick`` shrinks repeats and steps for a smoke run.
``--update PATH`` re-runs the chosen sections into an existing results file (the other sections
and their machine record are kept; each section records when it ran).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from bench.sec_analysis import analysis_section
from bench.sec_attention import ALPHA, attention_section
from bench.sec_claims import claims_section
from bench.sec_data import data_section
from bench.sec_loader import loader_section
from bench.sec_memory import memory_section
from bench.sec_overhead import overhead_section
from bench.sec_teacher import teacher_section
from bench.sec_train import train_section
from winft_lightning.runtime.machine import describe

SECTIONS = {
    "attention": attention_section,
    "analysis": analysis_section,
    "train": train_section,
    "overhead": overhead_section,
    "data": data_section,
    "loader": loader_section,
    "memory": memory_section,
    "claims": claims_section,
    "teacher": teacher_section,
}


def _dynamo_limits() -> None:
    """The bench compiles flex for many shapes and masks in one process: lift dynamo's
    per-function recompile limit so that none falls back to eager."""
    import torch._dynamo

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)


def _best_sparse(result: dict) -> str | None:
    """The attention section's fastest (order, block) at N = 576, alpha 0.1, if measured."""
    summary = result.get("attention", {}).get("b16_384", {}).get("summary", {})
    return summary.get("best_config_per_alpha", {}).get(str(ALPHA))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--out", default=None)
    parser.add_argument("--update", default=None, help="results JSON to re-run sections into")
    parser.add_argument("--batch", type=int, default=None, help="analysis batch (CPU 2, GPU 64)")
    parser.add_argument("--train-batch", type=int, default=None, help="train/memory batch")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps (smoke)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = min(args.repeat, 2)
    device = torch.device(args.device)
    _dynamo_limits()
    names = args.sections.split(",")
    for name in names:
        if name not in SECTIONS:
            sys.exit(f"unknown section {name!r}; choose from {sorted(SECTIONS)}")
    result = {"machine": describe(gpu_driver=True), "device": str(device), "quick": args.quick}
    if args.update:
        old = json.loads(Path(args.update).read_text())
        if old.get("machine"):
            old.setdefault("updates", []).append(
                {"machine": describe(gpu_driver=True), "sections": names}
            )
            result = old
    out = Path(
        args.out
        or args.update
        or f"outputs/bench/bench_{device.type}_{time.strftime('%Y-%m-%d')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        args.sparse_best = _best_sparse(result)
        start = time.perf_counter()
        try:
            result[name] = SECTIONS[name](device, args)
        except Exception as e:  # recorded; the other sections still run
            traceback.print_exc()
            result[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        result[name]["section_seconds"] = round(time.perf_counter() - start, 1)
        result[name]["ran_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        out.write_text(json.dumps(result, indent=2))  # after each section: a crash keeps the rest
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
