"""A training run killed with SIGKILL mid-epoch resumes and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import cli

pytestmark = pytest.mark.slow

ARGS = [
    "experiment=fmnist_vit", "debug=tiny", "trainer.max_epochs=3", "data.batch_size=16",
    "data.source.limit.train=800", "logger=many_loggers", "callbacks.rich_progress_bar=null",
]  # fmt: skip


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    # the reference: the same seed, never interrupted (also builds the cached shards)
    ref = cli(*ARGS, f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path}/ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = json.loads((tmp_path / "ref" / "results.json").read_text())

    run_dir = tmp_path / "killed"
    argv = [sys.executable, "-m", "winft_lightning", *ARGS, f"paths.root_dir={tmp_path}",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert last.exists(), "no epoch checkpoint before the kill"
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
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
