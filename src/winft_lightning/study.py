"""``python -m winft_lightning.study [study=quick|claims] [recompute=<report dir>]``: the
paper's study at small scale (:mod:`winft_lightning.stages.study` runs its sweeps and report)
and SPEC 9's training-free claims part on K cached teachers, whose saved records
``recompute=`` rebuilds the report from."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from winft_lightning.pipeline import ensure_teachers
from winft_lightning.stages.study import machine_line, run_study, study_figures
from winft_lightning.stages.study_report import write_report

log = logging.getLogger(__name__)


def study_command() -> str:
    """The command line this study was started with, as a user would type it."""
    return " ".join(["python -m winft_lightning.study", *sys.argv[1:]])


def run_claims(study: DictConfig, study_dir: Path, root_dir: Path) -> dict[str, Any]:
    """SPEC 9's training-free claims on the study's K teachers (each trained once and cached,
    each pass's per-image values kept under ``claims/records``), rebuilt into
    ``claims/report.md`` from those records. The teachers live in ``root_dir``'s cache, with
    the study's other artefacts."""
    from winft_lightning.stages import claims_report as R
    from winft_lightning.stages.claims import keep_chance

    spec = OmegaConf.to_container(study.claims, resolve=True)
    teachers_spec, resamples = spec.pop("teachers"), int(spec.pop("resamples"))
    teachers = ensure_teachers(
        teachers_spec["experiment"], teachers_spec["overrides"], teachers_spec["seeds"], root_dir
    )
    out = study_dir / "claims"
    passes = [R.measure_teacher(t, spec, out) for t in teachers]
    grid = tuple(passes[0]["grid"])
    chance = {"paper": keep_chance((14, 14), 0.1), "here": keep_chance(grid, 0.1)}
    fits = [(p["teacher_row"] or {}).get("fit_seconds") or 0.0 for p in passes]
    facts = R.part_facts(passes, spec, resamples, machine_line(), study_command(), chance,
                         round(sum(fits), 1), round(sum(p["measure_seconds"] for p in passes), 1))  # fmt: skip
    from winft_lightning.runtime.files import write_json_atomic

    write_json_atomic(out / "facts.json", facts)
    result = R.rebuild(out)
    for p in passes:
        top1 = (p["teacher_row"] or {}).get("top1")
        if top1 is not None and top1 < float(teachers_spec["min_top1"]):
            log.warning("study: teacher %d reached %.2f %% top-1, below the recipe's %s %%",
                        p["seed"], top1, teachers_spec["min_top1"])  # fmt: skip
    return result


def recompute(path: Path, out_root: Path) -> dict[str, bool]:
    """``recompute=<report dir>``: copy a claims part's records and facts (its ``claims/`` dir,
    or the dir itself) to ``out_root/<name>``, rebuild the report and figures there from them
    alone, and compare each rebuilt file with the saved one: ``{file: identical}``. The
    report dir itself is only read."""
    from winft_lightning.stages import claims_report as R

    src = path / "claims" if (path / "claims" / "facts.json").is_file() else path
    if not (src / "facts.json").is_file():
        raise FileNotFoundError(f"recompute={path}: no facts.json there or in its claims/")
    out = out_root / path.resolve().name
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src / "records", out / "records")
    shutil.copy2(src / "facts.json", out / "facts.json")
    R.rebuild(out)
    return {p.name: p.read_bytes() == (src / p.name).read_bytes()
            for p in sorted(out.iterdir()) if p.is_file() and (src / p.name).is_file()
            and p.name != "facts.json"}  # fmt: skip


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
    study_dir = Path(cfg.study_dir)
    start = time.perf_counter()
    if cfg.run and cfg.study.families:
        run_study(cfg.study, study_dir, Path(cfg.paths.root_dir))  # its cache: the claims' too
    root = Path(cfg.paths.root_dir)
    claims = run_claims(cfg.study, study_dir, root) if cfg.study.get("claims") else None
    title = f"winft_lightning study: {cfg.study.name}"
    paths = write_report(study_dir, title, machine_line(), claims=claims)
    figs = study_figures(study_dir)
    log.info("study figures: %d PNGs under %s", len(figs), study_dir / "figures")
    log.info("study done in %.0f s: %s", time.perf_counter() - start, paths["report"])
    print(paths["report"].read_text())


if __name__ == "__main__":
    main()
