"""Train-step ratios of this tree against another checkout of the project, paired in time.

    python -m bench.ab --base PATH [--pairs 6] [--repeat 10] [--one-process] [--out PATH]

One bench process per tree and pair, base first, so that the machine's drift (a neighbour's
load, clocks) falls on both trees of a pair alike. Each process times one SGD step of every
dense variant of the train section (``benchlib.VARIANTS``) in round-robin rounds at B/16 384
with vit_tiny widths and reports each variant's step over the ViT step: the ratios
``make bench`` holds to its targets. A single process measures them only to about +-5 % on a
2-core VM, which is more than most code changes move them; the pairs give the difference
(this tree - base) a t interval over pairs, and a verdict computed from it against a
declared margin (``MARGIN``).

``--one-process`` times both trees in the same processes instead: the base's package is
copied under another name (``winft_base``), both trees' modules are built in one process and
their steps interleaved in the same rounds, so that what one process does to timings (memory
layout, a neighbour's load while it runs) falls on both; ``--pairs`` is then the number of
processes, each giving one difference.

``--base`` is a checkout of the project (e.g. ``git worktree add /tmp/base REV``); its own
``src`` and ``bench/benchlib.py`` are imported in its processes, whichever layout it has (the
package split into subpackages or flat before, bench a package or flat scripts)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

THIS_TREE = Path(__file__).resolve().parents[1]
DENSE = ("vit", "awd_dense", "awd_dip_dense", "winft_dense", "winft_neg_inf_dense")


def _setting(benchlib: ModuleType) -> tuple[dict, dict, torch.device]:
    """The train section's CPU setting: B/16 384 geometry at vit_tiny widths, batch 2, local
    teacher-like windows."""
    import torch

    device = torch.device("cpu")
    net = {**benchlib.B16_384, **benchlib.WIDTHS["vit_tiny"]}
    masks, _ = benchlib.local_masks(2, benchlib._grid(benchlib.B16_384))
    return net, benchlib.synthetic_batch(2, net, masks, device), device


def tree_benchlib(tree: Path) -> ModuleType:
    """``tree``'s ``bench/benchlib.py`` loaded from its file as a module of its own name, so
    that either bench layout (flat scripts or the ``bench`` package) loads beside this tree's
    ``bench``, which runs the measurement; it imports the first ``winft_lightning`` on
    ``sys.path`` (``tree``'s in ``run_in``'s process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tree_benchlib", tree / "bench" / "benchlib.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def measure(tree: str, repeat: int) -> dict[str, float]:
    """Step / ViT step of every dense variant, built by ``tree``'s benchlib."""
    benchlib = tree_benchlib(Path(tree))
    net, data, device = _setting(benchlib)
    steps = {
        v: benchlib.train_step(benchlib.build_module(v, net, device), data, device) for v in DENSE
    }
    seconds = benchlib.timeit_interleaved(steps, repeat)
    return {"vit_step_s": seconds["vit"], **{v: seconds[v] / seconds["vit"] for v in DENSE[1:]}}


def _in_process(call: str, pythonpath: list[Path]) -> dict:
    """``bench.ab.<call>`` in a fresh Python process started in this tree, ``pythonpath`` its
    ``PYTHONPATH`` (where ``winft_lightning`` and ``winft_base`` are found); its printed JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    code = f"import json; from bench import ab; print('AB ' + json.dumps(ab.{call}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=THIS_TREE, env=env, capture_output=True, text=True
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("AB ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"bench process ({call}) failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][3:])


def run_in(tree: Path, repeat: int) -> dict[str, float]:
    """``measure`` in a fresh process that imports ``tree``'s package and benchlib."""
    return _in_process(f"measure({str(tree)!r}, {repeat})", [tree / "src"])


BASE_PACKAGE = "winft_base"


def base_package(base: Path, into: Path) -> Path:
    """``base``'s ``winft_lightning`` copied to ``into/winft_base`` with its own imports
    renamed, so that it imports beside this tree's package; returns ``into``."""
    import shutil

    target = into / BASE_PACKAGE
    shutil.copytree(
        base / "src" / "winft_lightning", target, ignore=shutil.ignore_patterns("*.pyc")
    )
    for path in target.rglob("*.py"):
        path.write_text(path.read_text().replace("winft_lightning", BASE_PACKAGE))
    return into


def modules_of(package: str) -> ModuleType:
    """``package``'s module holding the ``MODULES`` table, in either layout of the project:
    ``lit/modules.py`` (the package by subpackages) or ``modules.py`` (flat, before them)."""
    import importlib
    import importlib.util

    layout = "lit.modules" if importlib.util.find_spec(f"{package}.lit") else "modules"
    return importlib.import_module(f"{package}.{layout}")


def measure_both(repeat: int) -> dict[str, dict[str, float]]:
    """Both trees' step / ViT step in one process, every step of both in the same rounds."""
    from bench import benchlib

    net, data, device = _setting(benchlib)
    steps = {}
    for tree, package in (("base", BASE_PACKAGE), ("this", "winft_lightning")):
        modules = modules_of(package).MODULES
        for v in DENSE:
            module = benchlib.build_module(v, net, device, modules=modules)
            steps[(tree, v)] = benchlib.train_step(module, data, device)
    order = [(tree, v) for v in DENSE for tree in ("base", "this")]
    seconds = benchlib.timeit_interleaved({f"{t}/{v}": steps[(t, v)] for t, v in order}, repeat)
    return {
        tree: {
            "vit_step_s": seconds[f"{tree}/vit"],
            **{v: seconds[f"{tree}/{v}"] / seconds[f"{tree}/vit"] for v in DENSE[1:]},
        }
        for tree in ("base", "this")
    }


def run_both(base_dir: Path, repeat: int) -> dict[str, dict[str, float]]:
    """``measure_both`` in a fresh process (``base_dir`` holds the copied base package)."""
    return _in_process(f"measure_both({repeat})", [THIS_TREE / "src", base_dir])


MARGIN = 0.02  # the smallest ratio difference that matters: 2 % of a ViT step, declared here


def compare(base: list[dict], this: list[dict]) -> dict:
    """Per variant: both trees' ratios, the paired difference's t interval and SPEC 9's margin
    verdict on "this tree's ratio is higher" (a slower masked step relative to the ViT step):
    supported (low > MARGIN), contradicted (high < 0), negligible (inside +-MARGIN), else
    inconclusive."""
    from winft_lightning.core.claims import margin_verdict, t_interval

    out = {}
    for v in DENSE[1:]:
        deltas = [t[v] - b[v] for b, t in zip(base, this, strict=True)]
        ci = t_interval(deltas)
        out[v] = {
            "base": [round(b[v], 4) for b in base],
            "this": [round(t[v], 4) for t in this],
            "difference": {"mean": ci.estimate, "low": ci.low, "high": ci.high},
            "this_higher": margin_verdict(ci, MARGIN),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--base", required=True, type=Path, help="another checkout of the project")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--one-process", action="store_true", help="both trees in each process")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not (args.base / "bench" / "benchlib.py").is_file():
        raise SystemExit(
            f"--base {args.base}: not a checkout of this project (no bench/benchlib.py)"
        )
    sys.path.insert(0, str(THIS_TREE / "src"))
    from winft_lightning.runtime.machine import describe

    base_rev = subprocess.run(
        ["git", "-C", str(args.base), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    base, this = [], []
    with tempfile.TemporaryDirectory() as tmp:
        copied = base_package(args.base.resolve(), Path(tmp)) if args.one_process else None
        for i in range(args.pairs):
            if copied is not None:
                both = run_both(copied, args.repeat)
                base.append(both["base"])
                this.append(both["this"])
            else:
                base.append(run_in(args.base.resolve(), args.repeat))
                this.append(run_in(THIS_TREE, args.repeat))
            print(f"pair {i + 1}/{args.pairs}: base {base[-1]}\n  this {this[-1]}", flush=True)
    result = {
        "machine": describe(),
        "base": {"path": str(args.base), "rev": base_rev or None},
        "pairs": args.pairs,
        "design": "both trees in each process" if args.one_process else "alternating processes",
        "repeat": args.repeat,
        "vit_step_s": {
            "base": [b["vit_step_s"] for b in base],
            "this": [t["vit_step_s"] for t in this],
        },
        "ratios_to_vit": compare(base, this),
    }
    for v, row in result["ratios_to_vit"].items():
        d = row["difference"]
        print(
            f"{v}: this - base {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] -> {row['this_higher']}"
        )
    out = args.out or THIS_TREE / "outputs" / "bench" / f"ab_{time.strftime('%Y-%m-%d_%H-%M')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
