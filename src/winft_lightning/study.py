"""``python -m winft_lightning.study [study=quick|claims] [recompute=<report dir>]``: the
paper's study at small scale (:mod:`winft_lightning.stages.study` runs its sweeps and report)
and SPEC 9's training-free claims part on K cached teachers, whose saved records
``recompute=`` rebuilds the report from."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from winft_lightning.pipeline import Teacher

# The training stack (Lightning, timm) is imported where a part trains or measures teachers:
# ``recompute=`` rebuilds reports from saved records without it, in a second instead of ten.

log = logging.getLogger(__name__)


def study_command() -> str:
    """The command line this study was started with, as a user would type it."""
    return " ".join(["python -m winft_lightning.study", *sys.argv[1:]])


def students_teacher(study: DictConfig, root_dir: Path) -> tuple[list[str], str]:
    """The students' masks come from the claims part's teacher of seed ``students_teacher``
    (trained once and cached, shared with the claims part): ``["teacher.ckpt=<its file>"]``
    and a line saying which; ``students_teacher: null``: each job's own ``teacher.*``."""
    from winft_lightning.pipeline import ensure_teachers

    seed = study.get("students_teacher")
    if seed is None:
        return [], "each job's own teacher (its teacher.* config)"
    spec = study.claims.teachers
    (teacher,) = ensure_teachers(spec.experiment, list(spec.overrides), [int(seed)], root_dir)
    top1 = (teacher.row or {}).get("top1")
    top1 = "" if top1 is None else f", top-1 {top1:.2f} %"
    return [f"teacher.ckpt={teacher.ckpt}"], (
        f"the claims teacher of seed {seed} ({spec.experiment}, sha256 {teacher.sha256[:12]}{top1})"
    )


def trained_facts(study: DictConfig, study_dir: Path, teacher: str) -> dict[str, Any]:
    """What the trained part ran: students, seeds, teacher, machine, the last command that ran
    sweeps, and the wall time summed over every start of its sweeps (``sweeps.json``)."""
    from winft_lightning.stages.study import machine_line

    record = study_dir / "sweeps.json"
    starts = json.loads(record.read_text()) if record.is_file() else []
    seconds = sum(s["seconds"] for start in starts for s in start["sweeps"].values())
    ran = [start.get("command") for start in starts if start["sweeps"] and start.get("command")]
    return {"machine": machine_line(), "command": ran[-1] if ran else study_command(),
            "students": "the overrides " + ", ".join(f"`{o}`" for o in study.overrides),
            "seeds": list(study.seeds), "teacher": teacher,
            "wall": {"seconds": round(seconds, 1), "starts": len(starts)}}  # fmt: skip


def given_teachers(spec: dict[str, Any], root_dir: Path) -> tuple[list[Teacher], dict]:
    """The user's own trained teachers (``claims.teachers.ckpts``, in any format the checkpoint
    reader accepts), numbered 0..K-1, on the shard set of ``experiment`` with ``overrides``
    (built once and cached), and the experiment's net config: the architecture of a plain
    weights file."""
    from winft_lightning.models.teacher import plain_file_net
    from winft_lightning.pipeline import Teacher, ensure_shards, ensure_teacher, teacher_config
    from winft_lightning.runtime.checkpoints import checkpoint_file

    teachers, net = [], None
    for i, ckpt in enumerate(spec["ckpts"]):
        path = checkpoint_file(Path(ckpt).expanduser(), f"study.claims.teachers.ckpts[{i}]")
        cfg = teacher_config(spec["experiment"], [*spec["overrides"], f"teacher.ckpt={path}"], i,
                             root_dir)  # fmt: skip
        shards = ensure_shards(cfg)
        path, _, sha256 = ensure_teacher(cfg, shards)
        teachers.append(Teacher(i, path, sha256, shards, None))
        net = plain_file_net(OmegaConf.to_container(cfg.model.net, resolve=True))
    return teachers, net


def run_claims(study: DictConfig, study_dir: Path, root_dir: Path) -> dict[str, Any]:
    """SPEC 9's training-free claims on the study's K teachers (each trained once and cached,
    each pass's per-image values kept under ``claims/records``), rebuilt into
    ``claims/report.md`` from those records. The teachers live in ``root_dir``'s cache, with
    the study's other artefacts."""
    from winft_lightning.pipeline import ensure_teachers
    from winft_lightning.stages import claims_report as R
    from winft_lightning.stages.claims import keep_chance
    from winft_lightning.stages.study import machine_line

    spec = OmegaConf.to_container(study.claims, resolve=True)
    teachers_spec, resamples = spec.pop("teachers"), int(spec.pop("resamples"))
    reference = spec.pop("reference", None)
    if teachers_spec.get("ckpts"):
        teachers, spec["net"] = given_teachers(teachers_spec, root_dir)
    else:
        teachers = ensure_teachers(teachers_spec["experiment"], teachers_spec["overrides"],
                                   teachers_spec["seeds"], root_dir)  # fmt: skip
    out = study_dir / "claims"
    passes = [R.measure_teacher(t, spec, out) for t in teachers]
    grid = tuple(passes[0]["grid"])
    chance = {"paper": keep_chance((14, 14), 0.1), "here": keep_chance(grid, 0.1)}
    fits = [(p["teacher_row"] or {}).get("fit_seconds") or 0.0 for p in passes]
    facts = R.part_facts(passes, spec, resamples, machine_line(), study_command(), chance,
                         round(sum(fits), 1), round(sum(p["measure_seconds"] for p in passes), 1))  # fmt: skip
    from winft_lightning.runtime.files import write_json_atomic

    if reference:  # another grid's claims report: the two-grid table
        path = Path(reference).expanduser() / "claims.json"
        if not path.is_file():
            raise FileNotFoundError(f"study.claims.reference={reference}: no claims.json there")
        ref = json.loads(path.read_text())
        facts["reference"] = R.reference_of(ref, f"N = {ref['N']} ({reference})")
    write_json_atomic(out / "facts.json", facts)
    result = R.rebuild(out)
    for p in passes:
        top1 = (p["teacher_row"] or {}).get("top1")
        if top1 is not None and top1 < float(teachers_spec["min_top1"]):
            log.warning("study: teacher %d reached %.2f %% top-1, below the recipe's %s %%",
                        p["seed"], top1, teachers_spec["min_top1"])  # fmt: skip
    return result


def _parts(path: Path) -> dict[str, Path]:
    """The report parts under ``path`` (a study dir with ``claims/`` and/or ``trained/``, or
    one part's dir): ``{part: its dir}``."""
    if (path / "facts.json").is_file():
        return {"trained" if (path / "records" / "runs.csv").is_file() else "claims": path}
    return {p: path / p for p in ("claims", "trained") if (path / p / "facts.json").is_file()}


def recompute(path: Path, out_root: Path) -> dict[str, bool]:
    """``recompute=<report dir>``: copy each part's records and facts (its ``claims/`` and
    ``trained/`` dirs, or one such dir itself) to ``out_root/<name>/<part>``, rebuild its report
    and figures there from them alone, and compare each rebuilt file with the saved one:
    ``{"<part>/<file>": identical}``. The report dir itself is only read."""
    from winft_lightning.stages import claims_report, trained_report

    parts = _parts(path)
    if not parts:
        raise FileNotFoundError(
            f"recompute={path}: no facts.json there or in its claims/ or trained/"
        )
    out_dir = out_root / path.resolve().name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    same = {}
    for part, src in parts.items():
        out = out_dir / part
        shutil.copytree(src / "records", out / "records")
        shutil.copy2(src / "facts.json", out / "facts.json")
        {"claims": claims_report, "trained": trained_report}[part].rebuild(out)
        same |= {f"{part}/{p.name}": p.read_bytes() == (src / p.name).read_bytes()
                 for p in sorted(out.iterdir()) if p.is_file() and (src / p.name).is_file()
                 and p.name != "facts.json"}  # fmt: skip
    return same


@hydra.main(version_base="1.3", config_path="conf", config_name="study")
def main(cfg: DictConfig) -> None:
    if cfg.get("recompute"):
        out_root = Path(cfg.paths.output_root) / "recompute"
        same = recompute(Path(cfg.recompute).expanduser(), out_root)
        for name, identical in same.items():
            log.info("recompute: %s %s", name, "identical" if identical else "DIFFERS")
        rebuilt = out_root / Path(cfg.recompute).expanduser().resolve().name
        print(f"rebuilt under {rebuilt}: {sum(same.values())} of {len(same)} saved files identical")
        if not all(same.values()):
            raise SystemExit(f"recompute: {[k for k, v in same.items() if not v]} differ")
        return
    from winft_lightning.stages.study import machine_line, run_study, study_figures
    from winft_lightning.stages.study_report import write_report

    study_dir = Path(cfg.study_dir)
    start = time.perf_counter()
    root = Path(cfg.paths.root_dir)  # the study's cache: its teachers, shards, masks and runs
    trained = None
    if cfg.study.families:
        extra, teacher = students_teacher(cfg.study, root)
        if cfg.run:
            run_study(cfg.study, study_dir, root, extra, study_command())
        trained = trained_facts(cfg.study, study_dir, teacher)
    part = cfg.study.get("claims") and cfg.study.get("claims_part", True)
    claims = run_claims(cfg.study, study_dir, root) if part else None
    title = f"winft_lightning study: {cfg.study.name}"
    paths = write_report(study_dir, title, machine_line(), claims=claims, trained_facts=trained)
    figs = study_figures(study_dir)
    log.info("study figures: %d PNGs under %s", len(figs), study_dir / "figures")
    log.info("study done in %.0f s: %s", time.perf_counter() - start, paths["report"])
    print(paths["report"].read_text())


if __name__ == "__main__":
    main()
