"""The study's trained part: one Hydra multirun per method family and geometry (ViT; AWD-ViT
over alpha; AWD+DIP over beta; WinfT per beta) and per retrained control arm (SPEC 9, 10:
``study.controls``) x seeds (:func:`sweep_commands`, run by
:func:`run_sweeps`), all sharing the cached shards, teacher and masks, and the paper's figures
of the first finished WinfT run of each geometry (:func:`study_figures`). Their rows, tables
and report: :mod:`winft_lightning.stages.study_report`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from winft_lightning.stages.study_report import collect_runs

__all__ = ["run_sweeps", "study_arms", "study_controls", "study_figures", "sweep_commands"]

log = logging.getLogger(__name__)

# ---- running -------------------------------------------------------------------------


def _listed(value) -> list:
    """A study key that may be one value or a list of them, as a list."""
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]


def study_controls(study: DictConfig) -> list[tuple[str, str]]:
    """``(family, control)`` of each retrained control arm in ``study.controls``: an entry
    ``<family>:<control>`` (``awd_vit:centred``), or a bare family for SPEC 9's ``random``.
    A family the study does not run or an unknown control is refused, naming the entry."""
    from winft_lightning.data.masks import CONTROLS

    out = []
    for entry in study.get("controls") or []:
        family, _, control = str(entry).partition(":")
        control = control or "random"
        if family not in study.families or control not in CONTROLS:
            raise ValueError(
                f"study.controls entry {entry!r}: the family must be one of study.families "
                f"{list(study.families)} and the control one of {CONTROLS}"
            )
        out.append((family, control))
    return out


def _family_sweeps(study: DictConfig, family: str) -> list[tuple[str, list[str], list[tuple]]]:
    """(name stem, model overrides, its (alpha, beta) arms) of each Hydra multirun of one
    family: one for the ViT, AWD-ViT over ``alphas``, AWD+DIP over ``betas``; WinfT one per
    ``winft_beta`` (a value or a list), so that a beta added later gets its own sweep dir
    (``winft`` at beta 0, ``winft_b0200`` at 0.2) and the finished runs keep their job dirs."""
    alphas, betas = _listed(study.alphas), _listed(study.betas)
    if family == "vit":
        return [("vit", [], [(1.0, 0.0)])]
    if family == "awd_vit":
        return [("awd_vit", [f"model.alpha={','.join(str(a) for a in alphas)}"],
                 [(float(a), 0.0) for a in alphas])]  # fmt: skip
    if family == "awd_dip_vit":
        return [("awd_dip_vit", [f"model.alpha={study.dip_alpha}",
                                 f"model.beta={','.join(str(b) for b in betas)}"],
                 [(float(study.dip_alpha), float(b)) for b in betas])]  # fmt: skip
    if family == "winft":
        return [("winft" if float(b) == 0 else f"winft_b{round(float(b) * 1000):04d}",
                 [f"model.alpha={study.winft_alpha}", f"model.beta={b}"],
                 [(float(study.winft_alpha), float(b))]) for b in _listed(study.winft_beta)]  # fmt: skip
    raise ValueError(f"study.families entry {family!r} is not one of vit, awd_vit, "
                     "awd_dip_vit, winft")  # fmt: skip


def study_arms(study: DictConfig) -> list[list]:
    """Every arm the study's sweeps run, ``[family or family:control, alpha, beta]`` (the
    trained records' spelling), in sweep order: what the trained part's facts call
    configured."""
    controls = study_controls(study)
    arms = []
    for family in study.families:
        for _, _, pairs in _family_sweeps(study, family):
            arms += [[family, a, b] for a, b in pairs]
        for fam, control in controls:
            if fam == family:
                arms += [[f"{family}:{control}", a, b]
                         for _, _, pairs in _family_sweeps(study, family) for a, b in pairs]  # fmt: skip
    return arms


def sweep_commands(
    study: DictConfig, study_dir: Path, groups: list[tuple] | None = None
) -> list[tuple[str, list[str]]]:
    """(name, argv) of each Hydra multirun of the study: per geometry and family its sweeps
    (:func:`_family_sweeps`), each followed by its retrained controls (:func:`study_controls`:
    the same sweep with ``data.control=<control>``, named ``<stem>_<control>_<geometry>``), each
    once per group ``(tag, seeds, overrides)`` of student seeds and the overrides they share
    (:func:`.study_parts.students_teachers`: the teacher they read), under ``runs/<name>`` or,
    tagged, ``runs/<name>/<tag>``. None: one group, every seed, no overrides."""
    groups = groups or [(None, list(study.seeds), [])]
    controls = study_controls(study)
    commands = []
    for geom in study.geometries:
        tag = f"{geom.img_size}px_p{geom.patch_size}"
        for family in study.families:
            for stem, sweep, _ in _family_sweeps(study, family):
                arms = [(f"{stem}_{tag}", [])]
                arms += [(f"{stem}_{control}_{tag}", [f"data.control={control}"])
                         for fam, control in controls if fam == family]  # fmt: skip
                for (arm, control), (group, seeds, extra) in product(arms, groups):
                    name = arm + (f"/{group}" if group else "")
                    where = f"{study_dir}/runs/{name}"
                    argv = [
                        sys.executable, "-m", "winft_lightning", "--multirun",
                        f"experiment={study.experiment_prefix}{family}",
                        "seed=" + ",".join(str(s) for s in seeds),
                        f"model.net.img_size={geom.img_size}",
                        f"model.net.patch_size={geom.patch_size}",
                        *sweep,
                        f"hydra.sweep.dir={where}",
                        "hydra.sweep.subdir=${hydra.job.num}",
                        "compare_teacher=false",
                        "skip_if_done=true",
                        f"task_name=study_{family}",
                        *study.overrides,
                        *extra,
                        *control,
                    ]  # fmt: skip
                    commands.append((name, argv))
    return commands


def run_sweeps(
    study: DictConfig,
    study_dir: Path,
    root_dir: Path,
    groups: list[tuple] | None = None,
    command: str | None = None,
) -> dict[str, dict[str, float]]:
    """Run every sweep (a failing job is recorded by the job itself; the sweep goes on). The
    jobs write under the study's own ``root_dir`` (its cache and runs), wherever started. Each
    sweep's return code and wall time are appended to this start's entry of ``sweeps.json``
    (a resumed study keeps every start's times: the trained part's wall is their sum)."""
    from winft_lightning.runtime.files import write_json_atomic

    study_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WINFT_ROOT": str(root_dir)}
    record = study_dir / "sweeps.json"
    starts = json.loads(record.read_text()) if record.is_file() else []
    sweeps: dict[str, dict[str, float]] = {}
    starts.append({"started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command,
                   "sweeps": sweeps})  # fmt: skip
    for name, argv in sweep_commands(study, study_dir, groups):
        log.info("study: sweep %s", name)
        start = time.perf_counter()
        rc = subprocess.run(argv, check=False, env=env).returncode
        sweeps[name] = {"rc": rc, "seconds": round(time.perf_counter() - start, 1)}
        log.info("study: sweep %s rc=%s in %.0f s", name, rc, sweeps[name]["seconds"])
        write_json_atomic(record, starts)
    return sweeps


def study_figures(study_dir: Path, count: int = 3) -> list[Path]:
    """The paper's figures for the first ``count`` test images of each geometry's first
    finished WinfT run: its teacher's U, windows, DIP, fields and rollout, with WinfT's
    predicted W beside the ground-truth responsive fields, under ``figures/<geometry>/``."""
    from winft_lightning.data.shards import IMAGE_EXTS, iter_tar, read_manifest
    from winft_lightning.stages import visualize

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
                "alphas": sorted({0.05, 0.1, 0.2, row["alpha"]}),
                "betas": [0.1, 0.2, 0.5],
                # Fig. 10: WinfT's W beside the responsive field it was trained on
                "field_alpha": row["alpha"],
                "field_beta": row["beta"],
                "batch_size": count,
                "results": [str(study_dir / "runs")],
                "log_x": True,
            }
        )
    return written
