"""The sbatch mistakes refused before any work, from SLURM's environment variables (the real
cluster runs them in test_slurm.py): ``--ntasks`` without ``--ntasks-per-node``, several tasks
without ``srun``, ``trainer.devices`` / ``trainer.num_nodes`` against the job; a batch job's
run directory named after the job; our store's port beside Lightning's; the sbatch templates."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from helpers import REPO
from winft_lightning.runtime import world as worlds
from winft_lightning.stages.validate import ConfigError, validate_config

TEMPLATES = sorted((REPO / "scripts" / "slurm").glob("*.sbatch"))
# an srun task of a 2-task job on one node, as SLURM sets it
TASK = {"SLURM_JOB_ID": "5831", "SLURM_JOB_NAME": "winft", "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}  # fmt: skip
DDP = ("experiment=fmnist_awd_vit", "debug=tiny", "trainer=ddp", "trainer.accelerator=cpu",
       "trainer.precision=32-true")  # fmt: skip


def without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


@pytest.fixture
def slurm_env(monkeypatch):
    """Sets SLURM's variables (none of the caller's own), and a one-process world: these
    tests check the refusals, never start ranks."""
    for name in list(os.environ):
        if name.startswith("SLURM_") or name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(worlds, "_WORLD", worlds.World())

    def set_env(env: dict[str, str]) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_ntasks_without_ntasks_per_node_is_refused_naming_the_fix():
    message = worlds.slurm_launch_error(without(TASK, "SLURM_NTASKS_PER_NODE"))
    assert "`--ntasks=2`" in message and "`#SBATCH --ntasks-per-node=2`" in message
    assert "srun python -m winft_lightning" in message and "trainer.devices" in message
    assert "\n" not in message  # one paragraph


def test_several_tasks_without_srun_is_refused_naming_srun():
    message = worlds.slurm_launch_error(without(TASK, "SLURM_STEP_ID"))  # the batch script
    assert "not under `srun`" in message and "wait" in message


@pytest.mark.parametrize(
    "env",
    [
        TASK,  # --ntasks-per-node=2 under srun
        {**TASK, "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1"},
        without(TASK, "SLURM_NTASKS_PER_NODE", "SLURM_STEP_ID") | {"SLURM_NTASKS": "1"},
        {**without(TASK, "SLURM_NTASKS_PER_NODE"), "SLURM_JOB_NAME": "interactive"},
        {**without(TASK, "SLURM_NTASKS_PER_NODE"), "WORLD_SIZE": "2"},  # torchrun in a job
        {},
    ],
    ids=["srun-per-node", "one-task", "one-task-batch", "interactive", "torchrun", "no-slurm"],
)
def test_good_and_foreign_launches_pass(env):
    assert worlds.slurm_launch_error(env) is None


@pytest.mark.parametrize("procid", ["0", "1"])
def test_entry_point_stops_before_hydra_with_one_message(tmp_path, procid):
    """``python -m winft_lightning`` in an ``--ntasks=2`` job: exit status 2 before Hydra
    composes anything, the paragraph printed by task 0 alone, no traceback, nothing written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env |= without(TASK, "SLURM_NTASKS_PER_NODE") | {"SLURM_PROCID": procid}
    res = subprocess.run([sys.executable, "-m", "winft_lightning", *DDP, "trainer.devices=2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                         check=False)  # fmt: skip
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and not list(tmp_path.iterdir())
    if procid == "0":
        assert res.stderr.startswith(
            "winft_lightning: SLURM job 5831 runs 2 tasks from `--ntasks=2`"
        )
        assert res.stderr.count("winft_lightning:") == 1
    else:
        assert res.stderr == ""


def test_devices_and_nodes_that_disagree_with_the_job_are_refused(make_cfg, slurm_env):
    slurm_env(TASK)
    validate_config(make_cfg(*DDP, "trainer.devices=2"))  # what the job runs: accepted
    with pytest.raises(
        ConfigError, match=r"trainer.devices=1 .*SLURM_NTASKS_PER_NODE=2\): set trainer.devices=2"
    ):
        validate_config(make_cfg(*DDP, "trainer.devices=1"))
    # the default trainer (one device) under a 2-task job: refused before the teacher is built
    with pytest.raises(ConfigError, match=r"trainer.devices=1 .*runs 2 tasks per node"):
        validate_config(make_cfg("experiment=fmnist_awd_vit", "debug=tiny"))
    with pytest.raises(
        ConfigError, match=r"trainer.num_nodes=2, .*SLURM_NNODES=1\): set trainer.num_nodes=1"
    ):
        validate_config(make_cfg(*DDP, "trainer.devices=2", "trainer.num_nodes=2"))
    # `srun -n 1` in a job of 2 tasks per node: one rank would wait for its peer forever
    slurm_env({"SLURM_NTASKS": "1"})
    with pytest.raises(ConfigError, match=r"= 2 ranks, but srun started 1 task"):
        validate_config(make_cfg(*DDP, "trainer.devices=2"))


def test_ntasks_job_is_refused_by_validate_too(make_cfg, slurm_env):
    slurm_env(without(TASK, "SLURM_NTASKS_PER_NODE"))
    with pytest.raises(worlds.SlurmLaunchError, match="--ntasks-per-node=2"):
        validate_config(make_cfg(*DDP, "trainer.devices=2"))


def test_batch_job_run_dir_is_named_after_the_job(monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # outside a Hydra app: argv
    monkeypatch.setattr(sys, "argv", ["winft_lightning", "experiment=fmnist_winft"])
    name = worlds.slurm_run_name(TASK)
    assert re.fullmatch(r"slurm-5831\.0-[0-9a-f]{6}", name)
    # the same job started again by a requeue finds the same directory
    assert worlds.slurm_run_name({**TASK, "SLURM_RESTART_COUNT": "1"}) == name
    assert worlds.slurm_run_name({**TASK, "SLURM_STEP_ID": "1"}) != name  # a second srun
    assert worlds.slurm_run_name(without(TASK, "SLURM_STEP_ID")).startswith("slurm-5831.batch-")
    array = {**TASK, "SLURM_ARRAY_JOB_ID": "5830", "SLURM_ARRAY_TASK_ID": "1"}
    assert worlds.slurm_run_name(array).startswith("slurm-5830_1.0-")
    monkeypatch.setattr(sys, "argv", ["winft_lightning", "experiment=fmnist_vit"])
    assert worlds.slurm_run_name(TASK) != name  # another command in the same step
    assert worlds.slurm_run_name({**TASK, "SLURM_JOB_NAME": "bash"}) is None  # interactive
    assert worlds.slurm_run_name({}) is None


def test_run_stamp_under_slurm_is_the_job_name(slurm_env):
    from winft_lightning.runtime.resolvers import run_stamp

    assert not run_stamp().startswith("slurm-")
    slurm_env(TASK)
    assert run_stamp() == worlds.slurm_run_name()


def test_store_port_is_not_the_next_jobs_rendezvous_port():
    """Lightning's SLURM rendezvous port is 15000 + the job id's last 4 digits: a store on
    port + 1 took the next job's port when a sweep's two jobs shared a node."""
    lightning_ports = range(15000, 25000)
    for job in (5831, 9999, 10000, 123456):
        port = 15000 + int(str(job)[-4:])
        assert worlds.store_port(port) not in lightning_ports
    assert worlds.store_port(60000) == 50000


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_sbatch_templates(path):
    text = path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)
    directives = re.findall(r"^#SBATCH (\S+)", text, re.M)
    assert any(d.startswith("--ntasks-per-node=") for d in directives)
    assert not any(d.startswith(("--ntasks=", "-n")) for d in directives)
    assert "--requeue" in directives and "--signal=SIGUSR1@90" in directives
    assert re.search(
        r'srun "\$\{PYTHON:-python\}" -m winft_lightning trainer=ddp \\\n\s+'
        r'trainer.devices="\$SLURM_NTASKS_PER_NODE" trainer.num_nodes="\$SLURM_NNODES" "\$@"',
        text,
    )
    assert len(TEMPLATES) == 2
