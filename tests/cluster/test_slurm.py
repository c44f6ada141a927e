"""The SLURM path on a real one-node cluster (``slurm_cluster`` fixture: munged, slurmctld,
slurmd): README's submitit_slurm sweep, ``scripts/slurm/one_node.sbatch``'s 2-rank DDP run, the
same run requeued mid-training, and an ``--ntasks`` script refused before any work. The
commands are README's and the template's as written, with CPU overrides only (debug=tiny,
trainer.accelerator=cpu, trainer.devices=2, trainer.precision=32-true, two alphas)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import NO_FIGURES, REPO, store_builds
from readme import SWEEPS, is_slurm
from winft_lightning.runtime.checkpoints import read_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]

ONE_NODE = REPO / "scripts" / "slurm" / "one_node.sbatch"
(README_SWEEP,) = [c for c in SWEEPS if is_slurm(c)]
# README's GPU values replaced by CPU ones (two alphas: two jobs of two ranks)
CPU_VALUES = {"hydra.launcher.gpus_per_node": "null", "hydra.launcher.tasks_per_node": "2",
              "trainer.devices": "2", "model.alpha": "0.05,0.1"}  # fmt: skip
CPU_APPENDED = ("debug=tiny", "trainer.accelerator=cpu", "trainer.precision=32-true", NO_FIGURES)
# the sweep's job at alpha 0.1 (its cache entries are warm), for three epochs (an interrupt
# after the first leaves two to resume)
EPOCHS = 3
RUN_ARGS = ("experiment=awd_vit_b16_224", "model.alpha=0.1", *CPU_APPENDED, "trainer.devices=2",
            f"trainer.max_epochs={EPOCHS}")  # fmt: skip
# the template's GPU lines replaced on sbatch's command line: two CPU tasks
SBATCH_CPU = ("--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1")


def cpu_form(args: tuple[str, ...]) -> list[str]:
    out = [f"{a.split('=')[0]}={CPU_VALUES[a.split('=')[0]]}" if a.split("=")[0] in CPU_VALUES
           else a for a in args]  # fmt: skip
    replaced = {a.split("=")[0] for a in args} & CPU_VALUES.keys()
    assert replaced == CPU_VALUES.keys(), f"README's SLURM sweep changed: {args}"
    return [*out, *CPU_APPENDED]


def job_env(cluster) -> dict[str, str]:
    """What a user's shell holds when submitting: the cluster's SLURM_CONF, this interpreter
    first on PATH (``python`` in the scripts is it), W&B offline."""
    env = {k: v for k, v in cluster.env.items() if k != "WINFT_ROOT"}
    path = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env | {"PATH": path, "PYTHON": sys.executable, "WANDB_MODE": "offline",
                  "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}  # fmt: skip


def run_dirs(root: Path, job: int) -> list[Path]:
    return sorted((root / "outputs" / "runs").glob(f"*/slurm-{job}.*"))


# session-scoped: pytest tears a module fixture down whenever another module's test runs in
# between on the same worker, and these cost minutes of SLURM jobs
@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """Where every job of this module is submitted from: one outputs/ (runs and cache)."""
    return tmp_path_factory.mktemp("slurm_runs")


@pytest.fixture(scope="session")
def sweep(slurm_cluster, workdir) -> subprocess.CompletedProcess:
    """README's submitit_slurm sweep, started on an empty cache."""
    assert not (workdir / "outputs").exists()
    argv = [sys.executable, "-m", README_SWEEP.module, *cpu_form(README_SWEEP.args)]
    res = subprocess.run(argv, cwd=workdir, env=job_env(slurm_cluster), capture_output=True,
                         text=True, timeout=600, check=False)  # fmt: skip
    assert res.returncode == 0, f"{' '.join(argv)}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


@pytest.fixture(scope="session")
def template_runs(slurm_cluster, workdir, sweep) -> dict:
    """Three submissions of one_node.sbatch with the same overrides, at the same time (the
    cache is warm from the sweep). ``reference`` runs through. Once its first epoch's last.ckpt
    exists, ``requeued`` is requeued with ``scontrol requeue`` (SIGTERM to the ranks, SIGKILL
    after KillWait), and ``signalled`` gets SIGUSR1 (what ``--signal=SIGUSR1@90`` sends before
    the time limit: Lightning saves an hpc checkpoint and runs ``scontrol requeue`` itself);
    both start again."""
    cluster, env = slurm_cluster, job_env(slurm_cluster)
    submit = (*SBATCH_CPU, str(ONE_NODE), *RUN_ARGS)
    jobs = {name: cluster.sbatch(*submit, cwd=workdir, env=env)
            for name in ("reference", "requeued", "signalled")}  # fmt: skip
    act = {"requeued": lambda job: cluster.run("scontrol", "requeue", str(job)),
           "signalled": lambda job: cluster.run("scancel", "--signal=USR1", str(job))}  # fmt: skip
    out: dict = {name: {"job": job} for name, job in jobs.items()}
    end = time.monotonic() + 300
    while pending := [name for name in act if "epoch" not in out[name]]:
        for name in pending:
            job = jobs[name]
            last = [d / "checkpoints" / "last.ckpt" for d in run_dirs(workdir, job)]
            if last and last[0].is_file():
                act[name](job)
                out[name]["epoch"] = read_checkpoint(last[0])["epoch"]
                out[name]["interrupted"] = not (last[0].parent.parent / "results.json").exists()
                continue
            state = cluster.job(job)["JobState"]
            assert state in ("PENDING", "RUNNING"), f"job {job} {state} before its first epoch"
            assert time.monotonic() < end, f"no last.ckpt from job {job}\n{cluster.logs()}"
        time.sleep(0.05)
    for name in act:  # SLURM holds a requeued job ~2 min (BeginTime): start it now
        cluster.release(jobs[name])
    for name, job in jobs.items():
        state = cluster.wait(job, timeout=600)
        log = (workdir / f"slurm-{job}.out").read_text()
        assert state == "COMPLETED", f"job {job} {state}\n{log[-5000:]}"
        out[name] |= {"log": log, "info": cluster.job(job)}
    return out


def test_readme_submitit_slurm_sweep_runs_two_jobs_of_two_ranks_on_a_cold_cache(
    sweep, slurm_cluster, workdir
):
    (sweep_dir,) = (workdir / "outputs" / "multirun").glob("*/*")
    jobs = sorted(p for p in sweep_dir.iterdir() if p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    rows = []
    for job in jobs:
        assert not (job / "failed.json").exists(), (job / "failed.json").read_text()
        rows.append(json.loads((job / "results.json").read_text()))
        # both ranks of the job wrote into its one directory
        assert sorted(p.name for p in job.glob("*.log")) == [
            "debug_tiny.log",
            "debug_tiny.rank1.log",
        ]
    assert sorted(r["alpha"] for r in rows) == [0.05, 0.1]
    # each job was a SLURM job (an array task) of two tasks, and completed
    (script,) = (sweep_dir / ".submitit").glob("*/*_submission.sh")
    assert "#SBATCH --ntasks-per-node=2" in script.read_text()
    array = script.parent.name
    for i in (0, 1):
        # (submitit returns once the tasks' results are written: the job ends just after)
        assert slurm_cluster.wait(f"{array}_{i}", timeout=60) == "COMPLETED"
        assert len(list((sweep_dir / ".submitit" / f"{array}_{i}").glob("*_result.pkl"))) == 2
    # on the cold cache the jobs ran together: one built the teacher (one 2-rank DDP run), the
    # other waited for it or found it built, and reused it
    made = store_builds(workdir)
    assert {k: len(v) for k, v in made.items()} == {"shards": 1, "teachers": 1, "masks": 1}
    assert made["teachers"][0]["built_by"]["world_size"] == 2
    logs = [(job / "debug_tiny.log").read_text() for job in jobs]
    assert sum("teacher: training a baseline ViT" in log for log in logs) == 1
    assert sum("teacher: reusing cached" in log for log in logs) == 1
    assert len({r["teacher_ckpt"] for r in rows}) == 1


def test_one_node_sbatch_template_runs_two_ranks_into_one_run_dir(template_runs, workdir):
    ref = template_runs["reference"]
    assert ref["info"]["JobState"] == "COMPLETED"
    assert ref["info"]["ExitCode"] == "0:0" and ref["info"]["Restarts"] == "0"
    (run_dir,) = run_dirs(workdir, ref["job"])  # slurm-<job>.0-<hash>: the ranks share it
    assert run_dir.name.startswith(f"slurm-{ref['job']}.0-")
    assert sorted(p.name for p in run_dir.glob("*.log")) == [
        "debug_tiny.log",
        "debug_tiny.rank1.log",
    ]
    assert [p.parent for p in (workdir / "outputs" / "runs").rglob("results.json")
            if p.parent.name.startswith(f"slurm-{ref['job']}.")] == [run_dir]  # fmt: skip
    row = json.loads((run_dir / "results.json").read_text())
    assert row["epochs"] == EPOCHS and row["alpha"] == 0.1 and row["run_dir"] == str(run_dir)
    assert ref["log"].count("winft_lightning results") == 1  # global rank 0 alone prints
    assert "masks: reusing cached" in ref["log"]  # the sweep's cache entries


@pytest.mark.parametrize("how", ["requeued", "signalled"])
def test_requeued_run_resumes_in_its_run_dir_with_the_same_metrics(template_runs, workdir, how):
    """``requeued``: ``scontrol requeue`` mid-training; ``signalled``: Lightning's SIGUSR1 path.
    The job starts again in its run dir, resumes from last.ckpt and ends with the numbers of
    the uninterrupted ``reference``."""
    ref, job = template_runs["reference"], template_runs[how]
    assert job["interrupted"], "the run finished before it was interrupted"
    assert job["info"]["Restarts"] == "1" and job["info"]["ExitCode"] == "0:0"
    assert f"JOB {job['job']} ON" in job["log"] and "DUE TO JOB REQUEUE" in job["log"]
    (run_dir,) = run_dirs(workdir, job["job"])  # the second start found the first's directory
    assert f"resuming from {run_dir}/checkpoints/last.ckpt" in job["log"]
    # the first start never finished fitting
    assert job["log"].count(f"`Trainer.fit` stopped: `max_epochs={EPOCHS}` reached.") == 1
    assert job["log"].count("winft_lightning results") == 1
    if how == "signalled":  # Lightning saved its mid-epoch checkpoint; last.ckpt won
        assert "Handling auto-requeue signal" in job["log"]
        assert (run_dir / "hpc_ckpt_1.ckpt").is_file()
        assert "(not from the mid-epoch ['hpc_ckpt_1.ckpt'])" in job["log"]
    got = json.loads((run_dir / "results.json").read_text())
    (ref_dir,) = run_dirs(workdir, ref["job"])
    expected = json.loads((ref_dir / "results.json").read_text())
    print(f"\n{how} at epoch {job['epoch']}: uninterrupted top1 {expected['top1']!r} "
          f"val_top1 {expected['val_top1']!r}; {how} top1 {got['top1']!r} "
          f"val_top1 {got['val_top1']!r}")  # fmt: skip
    assert got["epochs"] == expected["epochs"] == EPOCHS
    for key in ("top1", "top5", "val_top1"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    # the same numbers because the same network: every weight of the final checkpoints
    final, reference = (
        read_checkpoint(d / "checkpoints" / "last.ckpt") for d in (run_dir, ref_dir)
    )
    assert final["global_step"] == reference["global_step"] > 0
    for name, weight in reference["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][name], weight, rtol=0, atol=1e-6, msg=name)


def test_sbatch_with_ntasks_is_refused_before_any_work(slurm_cluster, workdir):
    """The issue's script: ``--ntasks=2`` and ``srun python -m winft_lightning ...``. It stops
    at once with the fix named, printed once, no traceback, nothing written."""
    cwd = workdir / "ntasks"
    cwd.mkdir()
    script = cwd / "ntasks.sbatch"
    script.write_text(
        "#!/bin/bash\n#SBATCH --ntasks=2\n#SBATCH --output=slurm-%j.out\n"
        f"srun python -m winft_lightning {' '.join(RUN_ARGS)} trainer=ddp\n"
    )
    start = time.monotonic()
    job = slurm_cluster.sbatch(str(script), cwd=cwd, env=job_env(slurm_cluster))
    assert slurm_cluster.wait(job, timeout=120) == "FAILED"
    seconds = time.monotonic() - start
    info = slurm_cluster.job(job)
    log = (cwd / f"slurm-{job}.out").read_text()
    assert info["ExitCode"] == "2:0", log
    assert log.count("winft_lightning: SLURM job") == 1, log
    assert "`--ntasks=2`" in log and "`#SBATCH --ntasks-per-node=2`" in log, log
    assert "Traceback" not in log and "InterpolationResolutionError" not in log, log
    assert sorted(p.name for p in cwd.iterdir()) == ["ntasks.sbatch", f"slurm-{job}.out"]
    assert seconds < 60, seconds  # before the heavy imports: about a second on a free machine
    print(f"\nntasks refusal: {seconds:.1f} s from sbatch to FAILED")
