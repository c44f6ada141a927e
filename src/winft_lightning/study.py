"""``python -m winft_lightning.study [study=quick]``: the paper's study at small scale.

One Hydra multirun per method family and geometry (ViT; AWD-ViT over alpha; AWD+DIP over
beta; WinfT) x seeds, all sharing the cached shards, teacher and masks; then the
aggregation step: ``results.csv`` (one row per run), ``report.md`` (Tables I-III laid out as
in the paper, the paper's ImageNet figures beside ours) and the trade-off plot.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import hydra
import yaml
from omegaconf import DictConfig

from winft_lightning.families import BY_MODULE, BY_NAME

log = logging.getLogger(__name__)

FAMILIES = tuple(BY_NAME)  # the table's order is the report's order
LABELS = {f.name: f.label for f in BY_NAME.values()}
MODULE_FAMILY = {module: f.name for module, f in BY_MODULE.items()}

# The paper's ImageNet-1k figures (Tables I-III, ViT-B/16 at 224 unless stated), for reference.
PAPER_TABLE_I = {1.0: (38416, 81.20), 0.5: (38334, 81.62), 0.2: (10283, 81.25),
                 0.1: (8866, 81.90), 0.05: (6801, 80.60), 0.025: (4971, 78.28)}  # fmt: skip
PAPER_TABLE_II = {0.0: (8866, 81.90), 0.1: (7982, 82.09), 0.2: (7080, 82.40), 0.5: (4420, 80.62)}
PAPER_TABLE_III = {("ViT", "B/32", 224): (74.46, 2401), ("ViT", "B/32", 384): (81.28, 20736),
                   ("ViT", "B/16", 224): (81.20, 38416), ("ViT", "B/16", 384): (83.61, 331776),
                   ("WinfT", "B/32", 224): (78.74, 906), ("WinfT", "B/32", 384): (84.33, 8638),
                   ("WinfT", "B/16", 224): (83.11, 16938), ("WinfT", "B/16", 384): (84.62, 136327)}  # fmt: skip

RUN_FIELDS = ["family", "alpha", "beta", "img_size", "patch_size", "seed", "status", "top1",
              "top5", "val_top1", "eo", "eo_ratio", "num_patches", "images_per_s", "fit_seconds",
              "run_dir", "error"]  # fmt: skip


# ---- running -------------------------------------------------------------------------


def sweep_commands(study: DictConfig, study_dir: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of each Hydra multirun of the study."""
    seeds = ",".join(str(s) for s in study.seeds)
    commands = []
    for geom in study.geometries:
        tag = f"{geom.img_size}px_p{geom.patch_size}"
        for family in study.families:
            sweep = {
                "vit": [],
                "awd_vit": [f"model.alpha={','.join(str(a) for a in study.alphas)}"],
                "awd_dip_vit": [
                    f"model.alpha={study.dip_alpha}",
                    f"model.beta={','.join(str(b) for b in study.betas)}",
                ],
                "winft": [f"model.alpha={study.winft_alpha}", f"model.beta={study.winft_beta}"],
            }[family]
            argv = [
                sys.executable, "-m", "winft_lightning", "--multirun",
                f"experiment={study.experiment_prefix}{family}",
                f"seed={seeds}",
                f"model.net.img_size={geom.img_size}",
                f"model.net.patch_size={geom.patch_size}",
                *sweep,
                f"hydra.sweep.dir={study_dir}/runs/{family}_{tag}",
                "hydra.sweep.subdir=${hydra.job.num}",
                "compare_teacher=false",
                "skip_if_done=true",
                f"task_name=study_{family}",
                *study.overrides,
            ]  # fmt: skip
            commands.append((f"{family}_{tag}", argv))
    return commands


def run_study(study: DictConfig, study_dir: Path) -> dict[str, int]:
    """Run every sweep (a failing job is recorded by the job itself; the sweep goes on)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    codes = {}
    for name, argv in sweep_commands(study, study_dir):
        log.info("study: sweep %s", name)
        start = time.perf_counter()
        codes[name] = subprocess.run(argv, check=False).returncode
        log.info("study: sweep %s rc=%s in %.0f s", name, codes[name], time.perf_counter() - start)
    return codes


# ---- aggregating ---------------------------------------------------------------------


def collect_runs(study_dir: Path) -> list[dict[str, Any]]:
    """One row per job dir (``results.json`` or ``failed.json`` + its ``.hydra/config.yaml``)."""
    rows = []
    for cfg_file in sorted(study_dir.glob("runs/**/.hydra/config.yaml")):
        job = cfg_file.parent.parent
        cfg = yaml.safe_load(cfg_file.read_text())
        model = cfg["model"]
        family = MODULE_FAMILY.get(model["_target_"].rsplit(".", 1)[-1], "?")
        row: dict[str, Any] = {
            "family": family,
            "alpha": float(model["alpha"]) if family in ("awd_vit", "awd_dip_vit") else 1.0,
            "beta": float(model.get("beta") or 0.0) if family == "awd_dip_vit" else 0.0,
            "img_size": int(model["net"]["img_size"]),
            "patch_size": int(model["net"]["patch_size"]),
            "seed": int(cfg["seed"]),
            "run_dir": str(job),
        }
        if (job / "results.json").is_file():
            row.update({k: v for k, v in json.loads((job / "results.json").read_text()).items()
                        if k in RUN_FIELDS and k not in row})  # fmt: skip
            row["status"] = "ok"
        elif (job / "failed.json").is_file():
            row["status"] = "failed"
            row["error"] = json.loads((job / "failed.json").read_text())["error"]
        else:
            row["status"] = "incomplete"
        rows.append(row)
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    std = statistics.stdev(values) if len(values) > 1 else 0.0  # sample std over seeds
    return statistics.fmean(values), std


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of each (family, alpha, beta, geometry) row."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["family"], r["alpha"], r["beta"], r["img_size"], r["patch_size"])].append(r)
    out = []
    for (family, alpha, beta, img, patch), runs in sorted(groups.items(), key=_order):
        ok = [r for r in runs if r["status"] == "ok"]
        agg = {"family": family, "alpha": alpha, "beta": beta, "img_size": img,
               "patch_size": patch, "runs": len(runs), "ok": len(ok),
               "failed": len(runs) - len(ok)}  # fmt: skip
        for key in ("top1", "top5", "eo", "eo_ratio", "images_per_s"):
            agg[f"{key}_mean"], agg[f"{key}_std"] = _mean_std([r.get(key) for r in ok])
        out.append(agg)
    return out


def _order(item: tuple) -> tuple:
    (family, alpha, beta, img, patch), _ = item
    return (img, -patch, FAMILIES.index(family) if family in FAMILIES else 9, -alpha, beta)


def _pm(agg: dict, key: str, fmt: str) -> str:
    mean, std = agg[f"{key}_mean"], agg[f"{key}_std"]
    if math.isnan(mean):
        return "-"
    return f"{fmt.format(mean)} ± {fmt.format(std)}"


def _status(agg: dict) -> str:
    return "" if agg["failed"] == 0 else f" **FAILED {agg['failed']}/{agg['runs']}**"


def write_results_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in RUN_FIELDS})


def report_markdown(aggs: list[dict[str, Any]], title: str, machine: str) -> str:
    lines = [f"# {title}", "", machine, "",
             "Ours: Fashion-MNIST, mean ± sample std over seeds (n in brackets). Paper: ImageNet-1k, "
             "ViT-B/16 at 224 (Tables I-II) and the printed Table III, **for reference only**: "
             "different data, models and scale.", ""]  # fmt: skip
    geoms = sorted({(a["img_size"], a["patch_size"]) for a in aggs}, key=lambda g: (g[0], -g[1]))
    for img, patch in geoms:
        at = [a for a in aggs if (a["img_size"], a["patch_size"]) == (img, patch)]
        n = (img // patch) ** 2
        lines += [f"## {img} px, patch {patch} (N = {n}, N² = {n * n})", ""]
        lines += ["### Table I: AWD over alpha", "",
                  "| method | alpha | E_O (ours) | E_O / N² | top-1 % (ours) | E_O (paper) | top-1 % (paper) |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for a in at:
            if a["family"] in ("vit", "awd_vit") and a["beta"] == 0.0:
                paper = PAPER_TABLE_I.get(a["alpha"], (None, None))
                label = LABELS[a["family"]]
                lines.append(
                    f"| {label} (n={a['ok']}){_status(a)} | {a['alpha']:g} | {_pm(a, 'eo', '{:,.0f}')} | "
                    f"{_pm(a, 'eo_ratio', '{:.3f}')} | {_pm(a, 'top1', '{:.2f}')} | "
                    f"{'-' if paper[0] is None else f'{paper[0]:,}'} | {'-' if paper[1] is None else paper[1]} |"
                )
        lines += ["", "### Table II: AWD + DIP over beta", "",
                  "| method | alpha | beta | E_O (ours) | top-1 % (ours) | E_O (paper) | top-1 % (paper) |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        dip_alpha = {a["alpha"] for a in at if a["family"] == "awd_dip_vit"}
        for a in at:
            base = a["family"] == "awd_vit" and a["alpha"] in dip_alpha
            if a["family"] == "awd_dip_vit" or base:
                paper = (
                    PAPER_TABLE_II.get(a["beta"], (None, None))
                    if a["alpha"] == 0.1
                    else (None, None)
                )
                label = LABELS[a["family"]]
                lines.append(
                    f"| {label} (n={a['ok']}){_status(a)} | {a['alpha']:g} | {a['beta']:g} | "
                    f"{_pm(a, 'eo', '{:,.0f}')} | {_pm(a, 'top1', '{:.2f}')} | "
                    f"{'-' if paper[0] is None else f'{paper[0]:,}'} | {'-' if paper[1] is None else paper[1]} |"
                )
        lines.append("")
    lines += ["## Table III: ViT vs WinfT across geometries", "",
              "| method | image | patch | top-1 % (ours) | E_O (ours) | E_O / N² | train img/s |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for a in aggs:
        if a["family"] in ("vit", "winft"):
            lines.append(
                f"| {LABELS[a['family']]} (n={a['ok']}){_status(a)} | {a['img_size']} | "
                f"{a['patch_size']} | {_pm(a, 'top1', '{:.2f}')} | {_pm(a, 'eo', '{:,.0f}')} | "
                f"{_pm(a, 'eo_ratio', '{:.3f}')} | {_pm(a, 'images_per_s', '{:.0f}')} |"
            )
    lines += ["", "Paper (ImageNet-1k, Table III): "
              + "; ".join(f"{m}-{p} {r}: {acc:.2f} % (E_O {eo:,})"
                          for (m, p, r), (acc, eo) in PAPER_TABLE_III.items()), ""]  # fmt: skip
    return "\n".join(lines)


def write_report(study_dir: Path, title: str, machine: str) -> dict[str, Path]:
    """Aggregate the study dir's runs into results.csv, summary.csv, report.md, tradeoff.png."""
    rows = collect_runs(study_dir)
    if not rows:
        raise FileNotFoundError(f"no runs under {study_dir / 'runs'}")
    aggs = aggregate(rows)
    paths = {"results": study_dir / "results.csv", "summary": study_dir / "summary.csv",
             "report": study_dir / "report.md"}  # fmt: skip
    write_results_csv(rows, paths["results"])
    with paths["summary"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(aggs[0]))
        writer.writeheader()
        writer.writerows(aggs)
    report = report_markdown(aggs, title, machine)
    try:
        from winft_lightning import figures

        fig = figures.tradeoff_figure([r for r in rows if r["status"] == "ok"])
        paths["tradeoff"] = study_dir / "tradeoff.png"
        figures.save(fig, paths["tradeoff"])
        report += "\n![accuracy vs E_O](tradeoff.png)\n"
    except (ImportError, AttributeError) as err:  # figures are optional for the numbers
        log.warning("no trade-off plot: %s", err)
    paths["report"].write_text(report)
    return paths


def study_figures(study_dir: Path, count: int = 3) -> list[Path]:
    """The paper's figures for the first ``count`` test images of each geometry's first
    finished WinfT run: its teacher's U, windows, DIP, fields and rollout, with WinfT's
    predicted W beside the ground-truth responsive fields, under ``figures/<geometry>/``."""
    from winft_lightning import visualize
    from winft_lightning.data.shards import IMAGE_EXTS, iter_tar, read_manifest

    written: list[Path] = []
    done: set[tuple] = set()
    for row in collect_runs(study_dir):
        geometry = (row.get("img_size"), row.get("patch_size"))
        if row["family"] != "winft" or row["status"] != "ok" or geometry in done:
            continue
        per_run = json.loads((Path(row["run_dir"]) / "results.json").read_text())
        if not per_run.get("teacher_ckpt") or not Path(per_run.get("best_ckpt", "")).is_file():
            continue
        done.add(geometry)
        out = study_dir / "figures" / f"{geometry[0]}px_p{geometry[1]}"
        manifest = read_manifest(per_run["mask_root"])
        test = manifest["splits"]["test"]
        images = []
        for key, members in iter_tar(
            Path(manifest["root"]) / test["shards"][0], test["shard_counts"][0]
        ):
            ext = next(e for e in IMAGE_EXTS if e in members)
            path = out / "inputs" / f"{key}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(members[ext])
            images.append(str(path))
            if len(images) == count:
                break
        written += visualize.run(
            {
                "ckpt": per_run["teacher_ckpt"],
                "winft": per_run["best_ckpt"],
                "images": images,
                "out_dir": str(out),
                "alphas": [0.05, 0.1, 0.2],
                "betas": [0.1, 0.2, 0.5],
                "batch_size": count,
                "results": [str(study_dir / "runs")],
                "log_x": True,
            }
        )
    return written


def machine_line() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    return (
        f"Measured {time.strftime('%Y-%m-%d')} on {cpu}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}."
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="study")
def main(cfg: DictConfig) -> None:
    study_dir = Path(cfg.study_dir)
    start = time.perf_counter()
    if cfg.run:
        run_study(cfg.study, study_dir)
    paths = write_report(study_dir, f"winft_lightning study: {cfg.study.name}", machine_line())
    figs = study_figures(study_dir)
    log.info("study figures: %d PNGs under %s", len(figs), study_dir / "figures")
    log.info("study done in %.0f s: %s", time.perf_counter() - start, paths["report"])
    print(paths["report"].read_text())


if __name__ == "__main__":
    main()
