"""The pipeline under many processes, on an empty cache, as users start it: torchrun ranks, a
builder killed mid-teacher while another process waits on its lock, a corrupt cached mask
shard. (A parallel sweep's jobs on an empty cache: README's own sweep, test_readme_sweeps.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import NO_FIGURES, cli, store_builds, wait_for

pytestmark = pytest.mark.slow

TINY = ("experiment=fmnist_awd_vit", "debug=tiny", NO_FIGURES)
# size overrides appended to README's commands: one epoch each, the smallest run that shows the point
ONE_EPOCH = ("trainer.max_epochs=1", "teacher.max_epochs=1")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
DDP_CPU = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.precision=32-true", "logger=csv")  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}


def run(cmd, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group: on a time-out every process it started (torchrun's
    workers, a launcher's jobs) is killed with it."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{out[-3000:]}\n{err[-3000:]}")
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{out[-3000:]}\n{err[-5000:]}"
    return res


def results(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("results.json"))
            if "cache" not in p.parts]  # fmt: skip


def test_torchrun_on_an_empty_cache(tmp_path):
    """One torchrun of two ranks on an empty cache: one DDP teacher, the analysis split over the
    ranks, one run dir. (A warm second start over several ranks is the SLURM template's: its
    three jobs of two ranks start on the sweep's cache and end with the same numbers.)"""
    res = run((*TORCHRUN, "-m", "winft_lightning", *TINY, *DDP_CPU, *ONE_EPOCH), tmp_path)
    made = store_builds(tmp_path)
    assert {k: len(v) for k, v in made.items()} == {"shards": 1, "teachers": 1, "masks": 1}
    assert made["teachers"][0]["built_by"]["world_size"] == 2  # one 2-rank DDP teacher
    masks = tmp_path / "outputs" / "cache" / "masks" / made["masks"][0]["key"]
    ranks = json.loads((masks / "entry.json").read_text())["info"]["ranks"]
    assert sorted(ranks) == ["0", "1"] and all(ranks.values())  # analysis split
    assert not set(ranks["0"]) & set(ranks["1"])
    (row,) = results(tmp_path / "outputs" / "runs")  # one results.json, by rank 0
    run_dir = Path(row["run_dir"])
    assert sorted(p.name for p in run_dir.glob("*.log")) == [
        "debug_tiny.log",
        "debug_tiny.rank1.log",
    ]  # both ranks in one run dir
    assert res.stdout.count("winft_lightning results") == 1  # rank 0 alone prints
    assert "analyze: rank 1 of 2" in (run_dir / "debug_tiny.rank1.log").read_text()


def test_killed_teacher_builder_is_taken_over(tmp_path):
    epochs = 12
    # two processes started together: one builds a teacher of 12 two-batch epochs, the other
    # waits on its lock; the builder is killed after its first epoch checkpoint
    args = (sys.executable, "-m", "winft_lightning", *TINY, f"teacher.max_epochs={epochs}",
            "teacher.limit_train_batches=2", "trainer.max_epochs=1")  # fmt: skip
    logs = tmp_path / "a.out", tmp_path / "b.out"
    teachers = tmp_path / "outputs" / "cache" / "teachers"
    procs: list[subprocess.Popen] = []
    with logs[0].open("w") as out0, logs[1].open("w") as out1:
        try:
            for out in (out0, out1):
                procs.append(
                    subprocess.Popen(args, cwd=tmp_path, env=env(), stdout=out, stderr=out)
                )
            text = [lambda i=i: logs[i].read_text() for i in (0, 1)]
            training = "teacher: training a baseline ViT"
            wait_for(lambda: any(training in read() for read in text), *procs, timeout=300)
            builder = 0 if training in text[0]() else 1
            first, second = procs[builder], procs[1 - builder]
            # the other waits on the builder's lock while the builder is mid-teacher
            wait_for(
                lambda: "waiting for teachers/" in text[1 - builder](), first, second, timeout=300
            )
            wait_for(
                lambda: any(teachers.glob(".build-*/run/checkpoints/last.ckpt")), first, timeout=300
            )
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=60)
            assert second.wait(timeout=600) == 0, text[1 - builder]()[-4000:]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
    log = logs[1 - builder].read_text()
    assert "taking over teachers/" in log and f"pid {first.pid}" in log
    # the taker resumes the killed build from its epoch checkpoint (test_resume.py: to the
    # uninterrupted build's numbers)
    assert training in log and "resuming from" in log and ".build-" in log
    (teacher,) = store_builds(tmp_path)["teachers"]
    assert teacher["built_by"]["pid"] == second.pid
    entry = teachers / teacher["key"]
    assert json.loads((entry / "results.json").read_text())["epochs"] == epochs
    (row,) = results(tmp_path / "outputs" / "runs")  # the killed process wrote none
    assert row["teacher_ckpt"] == str(entry / "teacher.ckpt")


def test_truncated_cached_mask_shard_is_rebuilt_with_the_same_metrics(tmp_path):
    def job() -> subprocess.CompletedProcess:  # one process after the other: forked ones do
        res = cli(*TINY, *ONE_EPOCH, cwd=tmp_path, env=env())
        assert res.returncode == 0, res.stderr[-5000:]
        return res

    job()
    (masks,) = (tmp_path / "outputs" / "cache" / "masks").glob("[!.]*")
    shard = masks / "train-000000.tar"
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    res = job()
    log = res.stdout + res.stderr
    assert f"{shard} is {size // 2} bytes" in log and "moving it to" in log
    assert shard.stat().st_size == size
    assert len(store_builds(tmp_path)["masks"]) == 2
    first, second = results(tmp_path / "outputs" / "runs")
    for key in ("top1", "top5", "eo"):
        assert second[key] == pytest.approx(first[key], abs=1e-9)
