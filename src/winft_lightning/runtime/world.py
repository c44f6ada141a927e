"""The process world a job runs in: one process, or the ranks of a torchrun/SLURM job.

Prerequisites (shards, teacher, masks) are built before Lightning starts its process group,
so the ranks coordinate through a small key-value store instead: torchrun's own agent store
(``TORCHELASTIC_USE_AGENT_STORE``), else a ``TCPStore`` hosted by global rank 0 next to the
job's rendezvous port. Global rank 0 decides and the others follow, so every rank takes the
same path through the pipeline (a rank that decided on its own could wait on a collective its
peers never join).

Under SLURM it also refuses the common ways an sbatch script starts the ranks wrongly
(:func:`slurm_launch_error`) before anything waits on a rank that will never come, and names a
batch job's run directory after the job (:func:`slurm_run_name`), so that a requeued job
finds its own ``last.ckpt`` again.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

TIMEOUT = datetime.timedelta(hours=48)  # a teacher can train for a day while others wait


def _env_int(*names: str) -> int | None:
    for name in names:
        if os.environ.get(name, "").strip().lstrip("-").isdigit():
            return int(os.environ[name])
    return None


@dataclass
class World:
    """``rank`` / ``world_size`` of this process and the store the ranks talk through."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    store: Any = None
    _calls: dict[str, int] = field(default_factory=dict)

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def _key(self, name: str) -> str:
        # every rank makes the same calls in the same order, so the n-th call of a name
        # on one rank meets the n-th call of it on the others
        n = self._calls.get(name, 0)
        self._calls[name] = n + 1
        return f"{name}/{n}"

    def share(self, name: str, value: Any = None) -> Any:
        """Rank 0's ``value`` (JSON-serialisable) on every rank."""
        if not self.distributed:
            return value
        key = self._key(name)
        if self.is_zero:
            self.store.set(key, json.dumps(value))
            return value
        return json.loads(self.store.get(key))

    def gather(self, name: str, value: Any) -> list[Any] | None:
        """Every rank's ``value`` in rank order, on rank 0 (``None`` on the others)."""
        if not self.distributed:
            return [value]
        key = self._key(name)
        self.store.set(f"{key}/{self.rank}", json.dumps(value))
        if not self.is_zero:
            return None
        return [json.loads(self.store.get(f"{key}/{r}")) for r in range(self.world_size)]

    def barrier(self, name: str) -> None:
        """Return once every rank has called it."""
        if not self.distributed:
            return
        key = self._key(name)
        self.store.add(key, 1)
        while int(self.store.add(key, 0)) < self.world_size:
            time.sleep(0.05)


def _store(rank: int, world_size: int) -> Any:
    from torch.distributed import PrefixStore, TCPStore

    host = os.environ.get("MASTER_ADDR")
    port = _env_int("MASTER_PORT")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and host and port:
        store = TCPStore(host, port, is_master=False, timeout=TIMEOUT)
    else:
        if not host or port is None:
            host, port = _slurm_address()
        store = TCPStore(host, store_port(port), world_size, is_master=rank == 0, timeout=TIMEOUT)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return PrefixStore(f"winft_lightning/{attempt}/", store)


def store_port(port: int) -> int:
    """Our store's port beside the rendezvous ``port`` (which Lightning's process group takes).
    Lightning's SLURM port is 15000 + the job id's last 4 digits, so ``port + 1`` would be the
    next job's rendezvous port: two jobs on one node (a sweep's array) would collide. 10000 away
    lies outside that range."""
    return port + 10000 if port + 10000 <= 65535 else port - 10000


def _slurm_address() -> tuple[str, int]:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    env = SLURMEnvironment()
    return env.main_address, env.main_port


def _slurm_tasks() -> int:
    """Tasks of an srun step that Lightning treats as one job (as its SLURMEnvironment does)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return (_env_int("SLURM_NTASKS") or 1) if SLURMEnvironment.detect() else 1


def _slurm_batch(env: Mapping[str, str]) -> bool:
    """A SLURM job that Lightning takes for its cluster (not an interactive ``bash`` job, not a
    torchrun world inside a job)."""
    return (
        "SLURM_JOB_ID" in env
        and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")
        and "WORLD_SIZE" not in env
    )


def slurm_layout(env: Mapping[str, str] = os.environ) -> dict[str, int] | None:
    """``tasks`` (SLURM_NTASKS), ``per_node`` (SLURM_NTASKS_PER_NODE, 0 when unset) and
    ``nodes`` (SLURM_NNODES) of the SLURM job Lightning will run in, or None outside one."""
    if not _slurm_batch(env) or "SLURM_NTASKS" not in env:
        return None

    def num(name: str, default: int) -> int:
        value = env.get(name, "").split("(")[0]  # "2(x3)": 2 tasks on each of 3 nodes
        return int(value) if value.isdigit() else default

    return {
        "tasks": num("SLURM_NTASKS", 1),
        "per_node": num("SLURM_NTASKS_PER_NODE", 0),
        "nodes": num("SLURM_NNODES", 1),
    }


def slurm_launch_error(env: Mapping[str, str] = os.environ) -> str | None:
    """What is wrong with how SLURM started this process, as one paragraph naming the fix, or
    None: ``--ntasks`` without ``--ntasks-per-node`` (Lightning refuses it, deep inside the
    run), or a job of several tasks started without ``srun`` (one process would wait forever
    for ranks that never start)."""
    layout = slurm_layout(env)
    if layout is None or layout["tasks"] <= 1:
        return None
    n, job = layout["tasks"], env.get("SLURM_JOB_ID")
    if not layout["per_node"]:
        return (
            f"SLURM job {job} runs {n} tasks from `--ntasks={n}` (SLURM_NTASKS={n}) without "
            "`--ntasks-per-node`, so SLURM_NTASKS_PER_NODE is unset, and Lightning's SLURM "
            "environment cannot tell how many ranks each node runs: it refuses to start. Ask for "
            f"the tasks per node instead: `#SBATCH --ntasks-per-node={n}` on one node (over "
            "several nodes: `#SBATCH --nodes=N` and `--ntasks-per-node=<ranks per node>`), one "
            "task per device, and start every rank with `srun python -m winft_lightning ... "
            "trainer=ddp trainer.devices=<ranks per node> trainer.num_nodes=<nodes>`. "
            "scripts/slurm/one_node.sbatch and multi_node.sbatch do so."
        )
    if "SLURM_STEP_ID" not in env:
        return (
            f"SLURM job {job} asked for {n} tasks, but this process runs in the batch script "
            "itself, not under `srun`: only this one process would start, and it would wait "
            f"for {n - 1} more ranks forever. Start the ranks with `srun python -m "
            "winft_lightning ...` in the script (scripts/slurm/one_node.sbatch does), or ask "
            "for one task (`#SBATCH --ntasks-per-node=1`) to run a single process."
        )
    return None


class SlurmLaunchError(RuntimeError):
    """:func:`slurm_launch_error`'s message, raised before any work."""


def check_slurm_launch() -> None:
    if (message := slurm_launch_error()) is not None:
        raise SlurmLaunchError(message)


def refuse_bad_launch() -> None:
    """The entry point's first act: an sbatch script that starts the ranks wrongly stops here,
    before Hydra resolves the run directory (which already needs the ranks: a traceback deep in
    omegaconf otherwise), with :func:`slurm_launch_error`'s paragraph, printed once (by SLURM's
    task 0); every task exits with status 2."""
    message = slurm_launch_error()
    if message is not None:
        if os.environ.get("SLURM_PROCID", "0") == "0":
            print(f"winft_lightning: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


def slurm_run_name(env: Mapping[str, str] = os.environ) -> str | None:
    """``slurm-<job>.<step>-<hash of the command>`` in a SLURM batch job, else None.

    A requeued job (preempted, ``scontrol requeue``, a node failure) keeps its job id and runs
    its script again, so its ranks find the same run directory and resume from its
    ``last.ckpt``. The step (``batch`` outside srun) and the command's hash keep two runs of one
    job apart."""
    if not _slurm_batch(env):
        return None
    job = env["SLURM_JOB_ID"]
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    step = env.get("SLURM_STEP_ID", "batch")
    command = hashlib.sha256("\0".join(_task_overrides()).encode()).hexdigest()[:6]
    return f"slurm-{job}.{step}-{command}"


def _task_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # outside a Hydra app
        return sys.argv[1:]


_WORLD: World | None = None


def current() -> World:
    """This process's world, from torchrun's or SLURM's environment (made once)."""
    global _WORLD
    if _WORLD is None:
        check_slurm_launch()
        world_size = _env_int("WORLD_SIZE") or 1
        rank = _env_int("RANK")
        if rank is None and "WORLD_SIZE" not in os.environ and _slurm_tasks() > 1:
            world_size, rank = _slurm_tasks(), _env_int("SLURM_PROCID")
        local = _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0
        if world_size > 1 and rank is not None:
            _WORLD = World(rank, world_size, local, _store(rank, world_size))
            log.info("world: rank %d of %d (local rank %d)", rank, world_size, local)
        else:
            _WORLD = World()
    return _WORLD
