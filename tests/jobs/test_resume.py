"""A training run killed with SIGKILL mid-epoch resumes and ends where an uninterrupted run ends."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import NO_FIGURES, cli, wait_for

pytestmark = pytest.mark.slow

ARGS = [
    "experiment=fmnist_vit", "debug=tiny", "trainer.max_epochs=3", "data.batch_size=16",
    "data.source.limit.train=800", "logger=many_loggers", "callbacks.rich_progress_bar=null", NO_FIGURES,
]  # fmt: skip


def _sigkill_in_epoch_2(argv: list[str], under: Path, metrics: str, env=None) -> None:
    """Start ``argv`` and SIGKILL it once a metrics.csv matching ``metrics`` under ``under`` has
    a row of epoch 2's training steps (Lightning saves the CSV logger at each log), so epoch 1's
    last.ckpt was written before it."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def into_epoch_2() -> bool:
        return any(row.get("epoch") == "1" for path in under.rglob(metrics)
                   for row in csv.DictReader(path.read_text().splitlines()))  # fmt: skip

    try:
        wait_for(into_epoch_2, proc, timeout=240)
    except AssertionError:
        proc.kill()
        raise
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    # the reference: the same seed, never interrupted (also builds the cached shards)
    ref = cli(*ARGS, f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path}/ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = json.loads((tmp_path / "ref" / "results.json").read_text())

    run_dir = tmp_path / "killed"
    argv = [sys.executable, "-m", "winft_lightning", *ARGS, f"paths.root_dir={tmp_path}",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    _sigkill_in_epoch_2(argv, run_dir, "metrics.csv", env=env)
    assert (run_dir / "checkpoints" / "last.ckpt").exists(), "no epoch checkpoint before the kill"
    assert not (run_dir / "results.json").exists()  # it really was interrupted
    wandb_id = (run_dir / "wandb_id.txt").read_text()

    # same command, same run dir: resumes from last.ckpt by itself
    resumed = cli(*ARGS, f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    got = json.loads((run_dir / "results.json").read_text())
    assert got["epochs"] == expected["epochs"] == 3
    # CPU, no dropout, per-epoch seeded data order: the same numbers, to float tolerance
    for key in ("top1", "top5", "val_top1"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert (run_dir / "wandb_id.txt").read_text() == wandb_id  # the same W&B run continues


def test_ckpt_path_last_without_checkpoint_is_refused(tmp_path):
    res = cli(*ARGS, "ckpt_path=last", f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path}/x")
    assert res.returncode != 0
    assert "ckpt_path=last" in res.stderr and "does not exist" in res.stderr


TEACHER_ARGS = [
    "experiment=fmnist_awd_vit", "debug=tiny", "teacher.max_epochs=3", "trainer.max_epochs=1",
    "data.batch_size=16", "callbacks.rich_progress_bar=null", NO_FIGURES,
]  # fmt: skip


def test_a_killed_teacher_build_resumes_from_its_last_epoch(tmp_path):
    """The artifact store hands a teacher build left by a killed builder to the next run, which
    resumes it from its last finished epoch (not from scratch) and publishes the teacher an
    uninterrupted build publishes."""
    ref = cli(*TEACHER_ARGS, f"paths.root_dir={tmp_path}/ref", f"hydra.run.dir={tmp_path}/ref/run")
    assert ref.returncode == 0, ref.stderr[-3000:]
    (expected,) = [
        json.loads(p.read_text()) for p in (tmp_path / "ref").rglob("teachers/*/results.json")
    ]

    root = tmp_path / "killed"
    argv = [sys.executable, "-m", "winft_lightning", *TEACHER_ARGS, f"paths.root_dir={root}",
            f"hydra.run.dir={root}/run"]  # fmt: skip
    _sigkill_in_epoch_2(argv, root, ".build-*/run/csv/*/metrics.csv")
    (build,) = root.rglob("teachers/.build-*")
    assert (build / "run" / "checkpoints" / "last.ckpt").is_file()
    assert not list(root.rglob("teachers/*/teacher.ckpt"))  # nothing published yet

    again = cli(*TEACHER_ARGS, f"paths.root_dir={root}", f"hydra.run.dir={root}/run2")
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert f"resuming from {build}/run/checkpoints/last.ckpt" in log
    (got,) = [json.loads(p.read_text()) for p in root.rglob("teachers/*/results.json")]
    assert got["epochs"] == expected["epochs"] == 3
    for key in ("top1", "top5", "val_top1"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
