"""The process world a job runs in: one process, or the ranks of a torchrun/SLURM job.

Prerequisites (shards, teacher, masks) are built before Lightning starts its process group,
so the ranks coordinate through a small key-value store instead: torchrun's own agent store
(``TORCHELASTIC_USE_AGENT_STORE``), else a ``TCPStore`` hosted by global rank 0 next to the
job's rendezvous port. Global rank 0 decides and the others follow, so every rank takes the
same path through the pipeline (a rank that decided on its own could wait on a collective its
peers never join).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
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
        # our own store beside the rendezvous port, which Lightning's process group takes
        store = TCPStore(host, port + 1, world_size, is_master=rank == 0, timeout=TIMEOUT)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return PrefixStore(f"winft_lightning/{attempt}/", store)


def _slurm_address() -> tuple[str, int]:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    env = SLURMEnvironment()
    return env.main_address, env.main_port


def _slurm_tasks() -> int:
    """Tasks of an srun step that Lightning treats as one job (as its SLURMEnvironment does)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return (_env_int("SLURM_NTASKS") or 1) if SLURMEnvironment.detect() else 1


_WORLD: World | None = None


def current() -> World:
    """This process's world, from torchrun's or SLURM's environment (made once)."""
    global _WORLD
    if _WORLD is None:
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


def in_launched_child() -> bool:
    """A process Lightning re-launched for one device (``LOCAL_RANK`` set, no ``RANK``)."""
    return "LOCAL_RANK" in os.environ and "RANK" not in os.environ
