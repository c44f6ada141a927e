"""The headline experiment on a GPU: ``python -m winft_lightning experiment=winft_b16_384`` with
random weights on a synthetic ImageFolder tree, bf16, once with ``trainer=gpu`` and once with
``trainer=ddp trainer.devices=1``; step times and peak memory from
``bench.gpu_stats.GpuStepStats``.

    python -m bench.headline --out outputs/headline.json [--tree /tmp/tree] [--epochs 8]

The tree: ``--classes`` classes of smooth random images (a 12 x 12 noise field upsampled to
384 px, JPEG), ``--per-class`` training and a tenth as many test images per class. The first run
prepares the shards, saves the untrained teacher (``teacher.max_epochs=0``) and analyzes it; the
second reuses them from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _image(args: tuple[str, int]) -> None:
    import numpy as np
    from PIL import Image

    path, seed = args
    rng = np.random.default_rng(seed)
    small = (rng.random((12, 12, 3)) * 255).astype("uint8")
    Image.fromarray(small).resize((384, 384), Image.BICUBIC).save(path, quality=90)


def make_tree(root: Path, classes: int, per_class: int) -> dict:
    jobs = []
    for split, count in (("train", per_class), ("test", max(per_class // 10, 2))):
        for c in range(classes):
            folder = root / split / f"class_{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs += [(str(folder / f"{i:05d}.jpg"), len(jobs) + i) for i in range(count)]
    start = time.perf_counter()
    with ProcessPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(_image, jobs, chunksize=64))
    return {"images": len(jobs), "classes": classes, "seconds": time.perf_counter() - start}


def run(name: str, trainer: list[str], args, stats: Path) -> dict:
    cmd = [
        sys.executable, "-m", "winft_lightning", "experiment=winft_b16_384",
        "data=imagefolder", f"data.source.path={args.tree}", f"data.num_classes={args.classes}",
        "model.net.checkpoint=null", "teacher.max_epochs=0", *trainer,
        f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false",
        "~callbacks.rich_progress_bar", f"task_name=headline_{name}",
        "+callbacks.gpu_stats._target_=bench.gpu_stats.GpuStepStats", f"+callbacks.gpu_stats.path={stats}",
        *args.extra,
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    log = Path(args.out).with_name(f"headline_{name}.log")
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    fits = [json.loads(line) for line in stats.read_text().splitlines()] if stats.exists() else []
    results = sorted(Path("outputs").rglob("results.json"), key=lambda p: p.stat().st_mtime)
    row = {
        "command": " ".join(cmd[1:]),
        "returncode": proc.returncode,
        "wall_seconds": wall,
        "fits": fits,  # the teacher's (0 epochs: no steps) and WinfT's
    }
    winft = [r for r in results if f"headline_{name}" in str(r)]
    if winft:
        row["results"] = json.loads(winft[-1].read_text())
    print(f"headline {name}: rc {proc.returncode}, {wall:.0f} s, fits {fits}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", default="outputs/headline.json")
    parser.add_argument("--tree", default="/tmp/winft_tree")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--timeout", type=int, default=400)
    parser.add_argument("--runs", default="gpu+ddp", help="runs, '+'-separated: gpu, ddp, cpu")
    parser.add_argument("extra", nargs="*", help="more overrides (a CPU smoke test: trainer=cpu)")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"tree": make_tree(Path(args.tree), args.classes, args.per_class)}
    trainers = {
        "gpu": ["trainer=gpu"],
        "ddp": ["trainer=ddp", "trainer.devices=1"],
        "cpu": ["trainer=cpu"],
    }
    for name in args.runs.replace(",", "+").split("+"):
        stats = Path(args.tree).with_name(f"stats_{name}.jsonl")
        stats.unlink(missing_ok=True)
        try:
            result[name] = run(name, trainers[name], args, stats)
        except subprocess.TimeoutExpired as e:
            result[name] = {"error": f"timeout after {e.timeout} s"}
        out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
