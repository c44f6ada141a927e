"""OpenMP's wait policy: how torch's idle OpenMP threads wait for their next parallel region,
spinning (libgomp's default: about 300,000 turns, then asleep) or asleep at once
(``passive``). libgomp reads ``OMP_WAIT_POLICY`` once, when ``import torch`` loads it, so
:func:`set_wait_policy` puts it in the environment before that import; the processes started
afterwards inherit it. It changes no result: which thread computes what is the same under
every policy (bench/sec_teacher.py measured the study's teacher bit for bit alike).

When ``passive`` pays (``study.omp_wait_policy=passive``): on cores shared with other jobs, a
thread that spins while its partner waits for a core burns the core that partner needs. On
cores the study has to itself, spinning is faster: the study's default is the runtime's policy
(null). Both measured in docs/performance.md ("The study's teachers")."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

ENV = "OMP_WAIT_POLICY"
POLICIES = ("passive", "active")


def set_wait_policy(policy: str | None) -> str | None:
    """``OMP_WAIT_POLICY=<policy>`` (passive | active) in this process's environment, for the
    OpenMP runtime torch loads and for the processes this one starts; None: the runtime's
    default. A value already in the environment is the user's and is kept. Returns the policy
    the processes started from now on get (None: the default). Torch already loaded (this
    process, e.g. a fork of one that imported it, keeps the policy it loaded with): a warning."""
    if policy is None:
        return os.environ.get(ENV)
    if str(policy).lower() not in POLICIES:
        raise ValueError(f"omp_wait_policy must be one of {POLICIES} or null, got {policy!r}")
    if os.environ.get(ENV):
        if os.environ[ENV].lower() != str(policy).lower():
            log.info("%s=%s from the environment kept (not %s)", ENV, os.environ[ENV], policy)
        return os.environ[ENV]
    os.environ[ENV] = str(policy).upper()
    if "torch" in sys.modules:
        log.warning(
            "%s=%s: torch is already loaded, so this process keeps the wait policy it loaded "
            "with; the processes it starts get %s",
            ENV, os.environ[ENV], os.environ[ENV],
        )  # fmt: skip
    return os.environ[ENV]
