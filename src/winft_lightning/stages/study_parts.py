"""The study's parts, in order (:func:`run_parts`): the trained part (students swept on masks
from one teacher: :mod:`.sweeps`), SPEC 9's training-free claims part on K cached teachers
(:func:`run_claims`), then the report (:mod:`.study_report`) and the paper's figures."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from winft_lightning.stages.teachers import ensure_teachers, given_teachers

log = logging.getLogger(__name__)


def study_command() -> str:
    """The command line this study was started with, as a user would type it."""
    return " ".join(["python -m winft_lightning.study", *sys.argv[1:]])


def machine_line() -> str:
    """The report's line saying when and on what machine it was measured."""
    from winft_lightning.runtime.machine import summary

    return f"Measured {time.strftime('%Y-%m-%d')} on {summary()}."


def seeds_by_teacher(students: list[int], teachers: list[int]) -> dict[int, list[int]]:
    """``{teacher seed: the student seeds that read it}``: student ``students[i]`` reads teacher
    ``teachers[i % K]`` (a teacher no student reaches maps to []); the teacher seeds must be
    distinct, else a ValueError naming ``study.students_teachers.seeds``."""
    if not teachers or len(set(teachers)) != len(teachers):
        raise ValueError(f"study.students_teachers.seeds: distinct teacher seeds, got {teachers}")
    reads: dict[int, list[int]] = {t: [] for t in teachers}
    for i, student in enumerate(students):
        reads[teachers[i % len(teachers)]].append(int(student))
    return reads


def students_teachers(study: DictConfig, root_dir: Path) -> tuple[list[tuple], str]:
    """Which claims teachers' masks the students read (SPEC 10: the teacher a factor of the
    design). ``study.students_teachers``: ``seeds`` (teacher seeds of the claims recipe, each
    trained once and cached, shared with the claims part) and ``overrides`` added to that recipe
    (``[teacher.attn_bias=distance]``: the local family's teachers). Student seed
    ``study.seeds[i]`` reads teacher ``seeds[i % K]``, so each (teacher, seed) pair is one
    paired unit and the t interval over them carries the teachers' spread. Returns the sweeps'
    groups ``(tag, student seeds, ["teacher.ckpt=<file>"])`` (:func:`.sweeps.sweep_commands`;
    tag None with one teacher: the sweep dirs as before) and a line saying which teacher each
    seed read; ``students_teachers: null``: each job's own ``teacher.*``, one group."""
    spec = study.get("students_teachers")
    if spec is None:
        return [(None, list(study.seeds), [])], "each job's own teacher (its teacher.* config)"
    recipe, seeds = study.claims.teachers, [int(s) for s in spec.seeds]
    overrides = [*recipe.overrides, *(spec.get("overrides") or [])]
    reads = seeds_by_teacher(list(study.seeds), seeds)
    used = [t for t in seeds if reads[t]]  # only the teachers some student reads are trained
    groups, said = [], []
    for teacher in ensure_teachers(recipe.experiment, overrides, used, root_dir):
        students = reads[teacher.seed]
        tag = None if len(seeds) == 1 else f"teacher_{teacher.seed}"
        groups.append((tag, students, [f"teacher.ckpt={teacher.ckpt}"]))
        top1 = (teacher.row or {}).get("top1")
        top1 = "" if top1 is None else f", top-1 {top1:.2f} %"
        said.append(f"seed{'s' * (len(students) > 1)} {', '.join(map(str, students))}: the "
                    f"claims teacher of seed {teacher.seed} (sha256 {teacher.sha256[:12]}{top1})")  # fmt: skip
    family = " ".join(f"`{o}`" for o in spec.get("overrides") or []) or "none"
    return groups, (f"{recipe.experiment} with the claims recipe, extra teacher overrides "
                    f"{family}; " + "; ".join(said))  # fmt: skip


def trained_facts(study: DictConfig, study_dir: Path, teacher: str) -> dict[str, Any]:
    """What the trained part ran: students, seeds, teacher, the arms its config sweeps
    (``arms``: ``[family or family:control, alpha, beta]``, :func:`.sweeps.study_arms`), machine,
    the last command that ran sweeps, and the wall time summed over every start of its sweeps
    (``sweeps.json``)."""
    from winft_lightning.stages.sweeps import study_arms

    record = study_dir / "sweeps.json"
    starts = json.loads(record.read_text()) if record.is_file() else []
    seconds = sum(s["seconds"] for start in starts for s in start["sweeps"].values())
    ran = [start.get("command") for start in starts if start["sweeps"] and start.get("command")]
    return {"machine": machine_line(), "command": ran[-1] if ran else study_command(),
            "students": "the overrides " + ", ".join(f"`{o}`" for o in study.overrides),
            "seeds": list(study.seeds), "teacher": teacher, "arms": study_arms(study),
            "wall": {"seconds": round(seconds, 1), "starts": len(starts)}}  # fmt: skip


def trained_part(study: DictConfig, study_dir: Path, root_dir: Path, run: bool) -> dict[str, Any]:
    """The trained part: its sweeps run (``run``; else only the runs already there are read)
    with the students' teacher, and the part's facts (:func:`trained_facts`)."""
    from winft_lightning.stages.sweeps import run_sweeps

    groups, teacher = students_teachers(study, root_dir)
    if run:
        run_sweeps(study, study_dir, root_dir, groups, study_command())
    return trained_facts(study, study_dir, teacher)


def measure_claims(teachers, settings: dict[str, Any], out: Path, resamples: int,
                   null: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """Each teacher's claims pass and then (``null``: :func:`.null_report.null_spec`'s, None: not
    run) its randomisation null (SPEC 10), each saved under ``out/records`` and reused by its
    stamp, and the part's facts (:func:`.claims_report.part_facts`)."""
    from winft_lightning.stages import claims_report as R
    from winft_lightning.stages.claims import keep_chance
    from winft_lightning.stages.null_report import measure_null

    passes, nulls = [], []
    for t in teachers:
        passes.append(R.measure_teacher(t, settings, out))
        if null is not None:
            nulls.append(measure_null(t, settings, null, out))
    grid = tuple(passes[0]["grid"])
    chance = {"paper": keep_chance((14, 14), 0.1), "here": keep_chance(grid, 0.1)}
    fits = [(p["teacher_row"] or {}).get("fit_seconds") or 0.0 for p in passes]
    return R.part_facts(passes, settings, resamples, machine_line(), study_command(), chance,
                        round(sum(fits), 1), round(sum(p["measure_seconds"] for p in passes), 1),
                        null=(null, nulls))  # fmt: skip


def run_claims(study: DictConfig, study_dir: Path, root_dir: Path) -> dict[str, Any]:
    """SPEC 9's training-free claims on the study's K teachers (each trained once and cached,
    each pass's per-image values kept under ``claims/records``, with each teacher's
    randomisation null when ``study.claims.randomisation_null`` is set), rebuilt into
    ``claims/report.md`` from those records; then, for each of ``study.claims.teacher_families``
    (name -> teacher overrides added to the recipe's: another family of K teachers, same seeds
    and bar), the same part under ``claims_<name>/``, beside ``claims/`` in its two-report
    table. The teachers live in ``root_dir``'s cache, with the study's other artefacts.
    Returns ``claims/``'s result."""
    spec = OmegaConf.to_container(study.claims, resolve=True)
    families = check_teacher_families(spec.pop("teacher_families", None))
    reference = spec.pop("reference", None)
    ref = None
    if reference:  # read before any teacher trains: a wrong path costs nothing
        path = Path(reference).expanduser() / "claims.json"
        if not path.is_file():
            raise FileNotFoundError(f"study.claims.reference={reference}: no claims.json there")
        ref = json.loads(path.read_text())
        ref = (ref, f"N = {ref['N']} ({reference})")
    _check_families_compose(spec["teachers"], families, root_dir)
    result = _claims_part(spec, study_dir / "claims", root_dir, ref)
    teachers = spec["teachers"]
    for name, extra in families.items():
        family = {**spec, "teachers": {**teachers, "overrides": [*teachers["overrides"], *extra]}}
        _claims_part(family, study_dir / f"claims_{name}", root_dir,
                     (result, "claims/ (the study's teachers)"))  # fmt: skip
    return result


def check_teacher_families(families: Any) -> dict[str, list[str]]:
    """``study.claims.teacher_families`` as ``{name: [override, ...]}`` (None: none), each name
    a directory name (``claims_<name>``), else a ValueError naming the option."""
    option = "study.claims.teacher_families"
    if not families:
        return {}
    if not isinstance(families, dict):
        raise ValueError(f"{option} must map a name to a list of teacher overrides")
    for name, extra in families.items():
        if not str(name).replace("_", "").isalnum() or not isinstance(extra, list):
            raise ValueError(
                f"{option}.{name}: a name of letters, digits and _ mapping to a list of teacher "
                f"overrides, got {extra!r}"
            )
    return {str(k): [str(o) for o in v] for k, v in families.items()}


def _check_families_compose(teachers: dict[str, Any], families: dict[str, list[str]],
                            root_dir: Path) -> None:  # fmt: skip
    """Each family's first teacher composed and validated before any teacher trains (a typo in
    its overrides would otherwise surface after the study's own teachers); given files
    (``ckpts``) have no recipe to vary."""
    from winft_lightning.stages.teachers import teacher_config
    from winft_lightning.stages.validate import validate_config

    if families and teachers.get("ckpts"):
        raise ValueError("study.claims.teacher_families varies a recipe: not with teachers.ckpts")
    for extra in families.values():
        overrides = [*teachers["overrides"], *extra]
        validate_config(teacher_config(teachers["experiment"], overrides, teachers["seeds"][0],
                                       root_dir))  # fmt: skip


def _claims_part(spec: dict[str, Any], out: Path, root_dir: Path,
                 ref: tuple[dict[str, Any], str] | None) -> dict[str, Any]:  # fmt: skip
    """One claims part (:func:`run_claims`) of the teachers ``spec["teachers"]`` under ``out``,
    beside ``ref`` (another report's claims and its label) when given."""
    from winft_lightning.runtime.files import write_json_atomic
    from winft_lightning.stages import claims_report as R
    from winft_lightning.stages.null_report import null_spec

    spec = dict(spec)
    teachers_spec, resamples = spec.pop("teachers"), int(spec.pop("resamples"))
    # not a pass setting (the pass stamps stay as they were): the null's own
    null = null_spec(spec.pop("randomisation_null", None))
    if teachers_spec.get("ckpts"):
        teachers, spec["net"] = given_teachers(teachers_spec, root_dir)
    else:
        teachers = ensure_teachers(teachers_spec["experiment"], teachers_spec["overrides"],
                                   teachers_spec["seeds"], root_dir)  # fmt: skip
    facts = measure_claims(teachers, spec, out, resamples, null)
    facts["min_top1"] = float(teachers_spec["min_top1"])  # the sensitivity split's bar (SPEC 10)
    if ref is not None:  # another report's claims: the two-report table
        facts["reference"] = R.reference_of(*ref)
    write_json_atomic(out / "facts.json", facts)
    result = R.rebuild(out)
    for p in facts["passes"]:
        top1 = (p["teacher_row"] or {}).get("top1")
        if top1 is not None and top1 < float(teachers_spec["min_top1"]):
            log.warning("study: teacher %d reached %.2f %% top-1, below the recipe's %s %% "
                        "(kept in every table; the report's sensitivity split pools without it)",
                        p["seed"], top1, teachers_spec["min_top1"])  # fmt: skip
    return result


def run_parts(cfg: DictConfig) -> Path:
    """The study of the composed ``study.yaml`` config ``cfg``: its trained part (when it has
    ``study.families``), its claims part (when it has ``study.claims`` and ``claims_part`` is
    not false), then ``report.md`` and the figures under ``study_dir``. All of the study's
    teachers, shards, masks and runs are cached under ``paths.root_dir``. Returns the
    report's path."""
    from winft_lightning.stages.study_report import write_report
    from winft_lightning.stages.sweeps import study_figures

    study_dir = Path(cfg.study_dir)
    start = time.perf_counter()
    root = Path(cfg.paths.root_dir)
    trained = None
    if cfg.study.families:
        trained = trained_part(cfg.study, study_dir, root, bool(cfg.run))
    part = cfg.study.get("claims") and cfg.study.get("claims_part", True)
    claims = run_claims(cfg.study, study_dir, root) if part else None
    title = f"winft_lightning study: {cfg.study.name}"
    paths = write_report(study_dir, title, machine_line(), claims=claims, trained_facts=trained)
    figs = study_figures(study_dir, int(cfg.study.get("figure_images", 3)))
    log.info("study figures: %d PNGs under %s", len(figs), study_dir / "figures")
    log.info("study done in %.0f s: %s", time.perf_counter() - start, paths["report"])
    return paths["report"]
