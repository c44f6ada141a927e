"""Every runnable sweep in README.md runs as written (slow), from a fresh empty working
directory with no ``hydra.sweep.dir`` and no ``paths.root_dir``, with only ``debug=tiny``
appended (and a small ``n_trials`` for Optuna)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from helpers import NO_FIGURES, cli
from readme import (
    RUNNABLE,
    Command,
    compose_cli,
    is_optuna,
    sweep_jobs,
)

# ----------------------------------------------------------------------------- running

RUN_TIMEOUT = 1200
OPTUNA_TRIALS = 3
# size overrides appended to README's sweeps (its own overrides stay as written): one epoch
# each on half of debug=tiny's images
ONE_EPOCH = [NO_FIGURES, "trainer.max_epochs=1", "teacher.max_epochs=1", "data.source.limit.train=300",
             "data.source.limit.val=50", "data.source.limit.test=100"]  # fmt: skip
OPTUNA_EXTRA = [
    f"hydra.sweeper.n_trials={OPTUNA_TRIALS}",
    "hydra.sweeper.sampler.n_startup_trials=2",
]


def row_key(override_key: str) -> str | None:
    """The results.json field an override sets (``model.alpha`` -> ``alpha``), if any."""
    for prefix in ("model.net.", "model."):
        if override_key.startswith(prefix) and "." not in override_key[len(prefix) :]:
            return override_key[len(prefix) :]
    return None


def run_sweep(module: str, args: list[str], cwd: Path) -> tuple[Path, list[Path]]:
    """Run ``python -m module args`` in ``cwd`` (no WINFT_ROOT; forked, :func:`helpers.cli`);
    its sweep dir and job dirs."""
    env = {k: v for k, v in os.environ.items() if k != "WINFT_ROOT"}
    env |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    proc = cli(*args, module=module, timeout=RUN_TIMEOUT, cwd=cwd, env=env)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    sweeps = sorted((cwd / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1, sweeps  # one sweep dir, under the working directory's outputs/
    jobs = sorted((p for p in sweeps[0].iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return sweeps[0], jobs


@pytest.mark.parametrize("cmd", RUNNABLE)
def test_readme_sweep_runs_as_written(cmd: Command, tmp_path):
    extra = ["debug=tiny", *ONE_EPOCH, *(OPTUNA_EXTRA if is_optuna(cmd) else [])]
    sweep, jobs = run_sweep(cmd.module, [*cmd.args, *extra], tmp_path)
    # the jobs' override lists (Optuna draws its own)
    expected = (
        [None] * OPTUNA_TRIALS if is_optuna(cmd) else sweep_jobs([*cmd.overrides, *extra], True)
    )
    assert [p.name for p in jobs] == [str(i) for i in range(len(expected))]

    rows = []
    for job, overrides in zip(jobs, expected, strict=True):
        assert not (job / "failed.json").exists(), (job / "failed.json").read_text()
        row = json.loads((job / "results.json").read_text())
        assert math.isfinite(row["top1"]) and math.isfinite(row["val_top1"]), row
        n = row["num_patches"]
        if row["module"] == "ViTModule":
            assert row["eo"] == n * n, row
        else:  # a mask (AWD windows, DIP, WinfT's predicted W) keeps fewer interactions
            assert 0 < row["eo"] < n * n, row
        written = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        if overrides is not None:
            assert written == overrides  # the job ran what the sweep meant
        for item in written:  # and its results are of the values it was given
            key, _, value = item.partition("=")
            field = row_key(key)
            if field is not None and field in row:
                assert float(row[field]) == pytest.approx(float(value)), (job, item, row)
        rows.append((row, written))

    # prerequisites were built once each and shared (counted in the store's build records,
    # not in logs): one shard set; one teacher, and one mask set, per distinct teacher config
    # among the jobs (the teacher shares the student's net and optimizer, so a patch-size or
    # lr sweep trains several, an alpha/beta sweep one)
    teachers = set()
    for row, written in rows:
        cfg = compose_cli("train", written, tmp_path)
        assert row["module"] == cfg.model._target_.rsplit(".", 1)[1], (row["module"], written)
        teachers.add(json.dumps(OmegaConf.to_container(cfg.teacher, resolve=True), sort_keys=True))
    GlobalHydra.instance().clear()
    builds = [json.loads(s) for s in (tmp_path / "outputs" / "cache" / "builds.jsonl").open()]
    keys = [(b["kind"], b["key"]) for b in builds]
    assert len(keys) == len(set(keys)), keys
    kinds = [k for k, _ in keys]
    assert kinds.count("shards") == 1, keys
    assert kinds.count("teachers") == kinds.count("masks") == len(teachers), keys
    assert len({r["teacher_ckpt"] for r, _ in rows}) == len(teachers)

    if any(a.startswith("hydra/launcher=parallel") for a in cmd.args):
        # the jobs ran at the same time: each started before any other finished
        starts = [(j / ".hydra" / "config.yaml").stat().st_mtime for j in jobs]
        ends = [(j / "results.json").stat().st_mtime for j in jobs]
        assert max(starts) < min(ends), (starts, ends)
        # on the empty cache one job trained the teacher, and the others used its entry
        logs = [next(j.glob("*.log")).read_text() for j in jobs]
        assert sum("teacher: training a baseline ViT" in log for log in logs) == 1

    if is_optuna(cmd):
        result = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
        assert result["name"] == "optuna"
        best = result["best_value"]
        assert isinstance(best, float) and math.isfinite(best), result
        # the sweeper's best is the best job's val/top1 (what main() returns)
        assert best == pytest.approx(max(r["val_top1"] for r, _ in rows))
        params = OmegaConf.load(jobs[0] / ".hydra" / "hydra.yaml").hydra.sweeper.params
        assert set(result["best_params"]) == set(params)
        best_jobs = [w for r, w in rows if r["val_top1"] == pytest.approx(best)]
        assert any(
            all(f"{k}={v}" in w for k, v in result["best_params"].items()) for w in best_jobs
        ), (result, best_jobs)


@pytest.mark.slow
def test_optuna_sweep_goes_on_past_a_failed_trial(tmp_path):
    """A failed job returns None from main() (its error in failed.json): Optuna marks that
    trial failed, runs the rest, and reports the best of those that finished. Only alpha 0.1
    is analyzed here, so the trials that draw another alpha fail before any work."""
    args = ["-m", "hparams_search=optuna", "experiment=fmnist_awd_vit", "debug=tiny",
            "analyze.alphas=[0.1]", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.sampler.n_startup_trials=3", *ONE_EPOCH]  # fmt: skip
    sweep, jobs = run_sweep("winft_lightning", args, tmp_path)
    assert len(jobs) == 3
    failed = [j for j in jobs if (j / "failed.json").is_file()]
    done = [j for j in jobs if (j / "results.json").is_file()]
    # the sampler (seeded) draws a failing and a running alpha in 3 trials
    assert failed and done and len(failed) + len(done) == 3, (failed, done)
    for job in failed:
        error = json.loads((job / "failed.json").read_text())["error"]
        assert "not among the analyzed alphas" in error, error
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    best = max(json.loads((j / "results.json").read_text())["val_top1"] for j in done)
    assert result.best_value == pytest.approx(best)
    assert result.best_params["model.alpha"] == pytest.approx(0.1)
