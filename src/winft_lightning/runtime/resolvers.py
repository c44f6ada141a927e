"""OmegaConf resolvers the configs use (registered when the package is imported).

* ``${winft.cwd:}``: the directory the command was started from. Unlike
  ``${hydra:runtime.cwd}`` it resolves before Hydra's config exists, which a sweeper needs to
  resolve ``hydra.sweep.dir`` (``oc.env``'s default is resolved eagerly).
* ``${winft.run_stamp:FORMAT}``: the start time plus a random suffix: two jobs started in the
  same second (a SLURM array, two sweeps) never share a directory. Every rank of a
  torchrun/SLURM job gets rank 0's stamp, so all ranks write one run directory. In a SLURM
  batch job the stamp is the job's own name instead (``slurm-<job>.<step>-<command hash>``,
  :func:`~winft_lightning.runtime.world.slurm_run_name`): a requeued job resumes in it.
* ``${winft.rank_suffix:}``: ``""`` on global rank 0, ``.rank<r>`` on the others (log files).

:func:`to_plain` turns a config into plain Python (the one place that does).
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from omegaconf import OmegaConf


def run_stamp(pattern: str = "%Y-%m-%d_%H-%M-%S") -> str:
    from winft_lightning.runtime import world as worlds

    world = worlds.current()
    mine = None
    if world.is_zero:
        mine = worlds.slurm_run_name() or f"{time.strftime(pattern)}_{secrets.token_hex(2)}"
    return world.share("run_stamp", mine)


def rank_suffix() -> str:
    from winft_lightning.runtime import world as worlds

    rank = worlds.current().rank
    return f".rank{rank}" if rank else ""


def register() -> None:
    OmegaConf.register_new_resolver("winft.cwd", os.getcwd, replace=True)
    OmegaConf.register_new_resolver("winft.run_stamp", run_stamp, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("winft.rank_suffix", rank_suffix, replace=True)


def to_plain(obj: Any) -> Any:
    """A Hydra/OmegaConf container -> plain Python (resolved); anything else as it is. What
    checkpoints (loaded with ``weights_only=True``) and manifests store."""
    from omegaconf import Container

    return OmegaConf.to_container(obj, resolve=True) if isinstance(obj, Container) else obj
