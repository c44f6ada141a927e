"""A real one-node SLURM cluster in a temporary directory: munged, slurmctld and slurmd (Debian's
``munge``, ``slurmctld``, ``slurmd``, ``slurm-client``; ``make install`` installs them as root),
each with its own key, socket, ports, state and logs, for the tests of the SLURM path.

Clients find it through ``SLURM_CONF`` (in :attr:`SlurmCluster.env`); nothing under ``/etc`` is
read or written. Started by the session fixture ``slurm_cluster`` (conftest.py); by hand:
``python tests/slurm_cluster.py DIR`` starts one and prints the ``SLURM_CONF`` to export
(Ctrl-C or SIGTERM stops it).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "squeue", "sinfo", "scancel")
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
        "DEADLINE", "PREEMPTED")  # fmt: skip


class ClusterError(RuntimeError):
    """The cluster did not come up or a client command failed; the message carries its logs."""


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    if os.name != "posix" or os.geteuid() != 0:
        return "the SLURM tests start munged, slurmctld and slurmd: they need root"
    absent = [n for n in (*DAEMONS, *CLIENTS) if shutil.which(n, path=_path()) is None]
    if absent:
        return (
            f"SLURM is not installed ({', '.join(absent)} not found): as root, `make install` or "
            "`apt-get install slurmctld slurmd slurm-client munge`"
        )
    return None


def _path() -> str:
    return os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK",
               "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(root: Path, munge: Path, node: str, cpus: int, memory_mb: int) -> str:
    ports = free_port(), free_port()
    # Lightning's DDP port is 15000 + the job id's last 4 digits: job ids start at a random
    # number so that two clusters on one machine do not hand out the same port
    first_job = random.randint(1000, 8999)
    return f"""\
ClusterName=winft{os.getpid()}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
FirstJobId={first_job}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge}/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=3600
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    root: Path
    munge: Path
    node: str
    cpus: int
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The caller's environment with ``SLURM_CONF`` set, no SLURM job of its own, and no
        process-group variables: an earlier in-process DDP test of this pytest worker leaves
        MASTER_PORT behind, and every job would then take that one port."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in LAUNCH_VARS}  # fmt: skip
        return {**env, "SLURM_CONF": str(self.conf), "PATH": _path()}

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw) -> str:
        res = subprocess.run(cmd, env=kw.pop("env", self.env), capture_output=True, text=True,
                             timeout=timeout, check=False, **kw)  # fmt: skip
        if check and res.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)}: rc={res.returncode}\n{res.stdout}{res.stderr}")
        return res.stdout

    def sbatch(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> int:
        """Submit (``sbatch --parsable ARGS``) and return the job id."""
        out = self.run("sbatch", "--parsable", *args, cwd=cwd, env=env or self.env)
        return int(out.strip().split(";")[0])

    def job(self, job_id: int | str) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, Restarts, ExitCode, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id))
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: int, timeout: float = 300, states: tuple[str, ...] = DONE) -> str:
        """Poll until the job is in one of ``states``; its state."""
        end = time.monotonic() + timeout
        while (state := self.job(job_id)["JobState"]) not in states:
            if time.monotonic() > end:
                self.run("scancel", str(job_id), check=False)
                raise ClusterError(f"job {job_id} still {state} after {timeout} s\n{self.logs()}")
            time.sleep(0.2)
        return state

    def release(self, job_id: int, timeout: float = 60) -> None:
        """Start a requeued job again at once, once SLURM has put it back in the queue: SLURM
        holds a requeued job for about 2 minutes (``Reason=BeginTime``); ``StartTime=now``
        lifts the hold."""
        end = time.monotonic() + timeout
        while self.job(job_id)["JobState"] != "PENDING":
            if time.monotonic() > end:
                raise ClusterError(f"job {job_id} was not requeued\n{self.logs()}")
            time.sleep(0.1)
        self.run("scontrol", "update", f"jobid={job_id}", "StartTime=now")

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
                         for p in sorted((self.root / "log").glob("*")))  # fmt: skip

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged."""
        jobs = self.run("squeue", "-h", "-o", "%i", check=False).split()
        if jobs:
            self.run("scancel", *jobs, check=False)
            end = time.monotonic() + 30
            while self.run("squeue", "-h", "-o", "%i", check=False).split():
                if time.monotonic() > end:
                    break
                time.sleep(0.2)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        subprocess.run(["munged", "--stop", f"--socket={self.munge}/munge.socket"],
                       env=self.env, capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(self.munge, ignore_errors=True)


def start_cluster(root: Path, cpus: int | None = None, timeout: float = 60) -> SlurmCluster:
    """munged, slurmctld and slurmd under ``root``; returns once the node is idle.

    ``cpus``: the node's CPUs as SLURM counts them (``SlurmdParameters=config_overrides``:
    more than the machine has is allowed), so that three 2-task jobs can run at once."""
    root = Path(root).resolve()
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # munged wants every directory above its socket searchable by all (pytest's tmp dirs are
    # private): its key, socket and pid live in a directory of their own under /tmp
    munge = Path(tempfile.mkdtemp(prefix="winft-munge-"))
    munge.chmod(0o755)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    cpus = cpus or max(6, os.cpu_count() or 1)
    memory = 4096
    (root / "slurm.conf").write_text(slurm_conf(root, munge, node, cpus, memory))
    cluster = SlurmCluster(root, munge, node, cpus)
    env = cluster.env
    log = root / "log"
    try:
        munged = subprocess.run(
            ["munged", f"--socket={munge}/munge.socket", f"--key-file={key}",
             f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/munged.seed",
             f"--log-file={log}/munged.log"],
            env=env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if munged.returncode != 0:
            raise ClusterError(f"munged did not start: {munged.stderr}\n{cluster.logs()}")
        for cmd in (["slurmctld", "-D", "-i"], ["slurmd", "-D"]):
            with (log / f"{cmd[0]}.out").open("w") as f:
                cluster.procs.append(subprocess.Popen(cmd, env=env, stdout=f, stderr=f,
                                                      start_new_session=True))  # fmt: skip
            if cmd[0] == "slurmctld":
                _until(lambda: "UP" in cluster.run("scontrol", "ping", check=False),
                       cluster, timeout)  # fmt: skip
        _until(lambda: cluster.run("sinfo", "-h", "-o", "%t", check=False).strip() == "idle",
               cluster, timeout)  # fmt: skip
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _until(predicate, cluster: SlurmCluster, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        dead = [p.args[0] for p in cluster.procs if p.poll() is not None]
        if dead or time.monotonic() > end:
            why = f"{', '.join(dead)} exited" if dead else f"not ready after {timeout} s"
            raise ClusterError(f"SLURM cluster in {cluster.root}: {why}\n{cluster.logs()}")
        time.sleep(0.1)


def _stop(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    if why := missing():
        sys.exit(why)
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started in the background
        signal.signal(signum, _stop)
    cluster = start_cluster(Path(sys.argv[1] if len(sys.argv) > 1 else "slurm-cluster"))
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    try:
        signal.pause()
    finally:
        cluster.stop()
