"""``teacher`` section: the study's teachers trained as the study trains them, images/s of the
recipe as it was ("eager": torch's default OpenMP wait policy, 2 threads, no compile) against
OpenMP's passive wait policy ("passive": the same job in a process with
``OMP_WAIT_POLICY=PASSIVE``, what ``study.omp_wait_policy=passive`` sets), and
against ``torch.compile`` and one torch thread.

Each arm is the teacher job of a study (``conf/study/full.yaml``'s ``claims.teachers``: N = 64;
``paper_grid.yaml``'s: N = 196), composed by ``stages.teachers.teacher_config`` and
``stages.cache.teacher_job`` on the real Fashion-MNIST shards the study builds
(``ensure_shards``, cached under ``paths.cache_dir``), with its own overrides on top, trained in
a real Lightning Trainer (the job's trainer, loggers and per-step callbacks; no validation,
checkpoint or end-of-fit figures) for ``warmup + steps`` steps a round. images/s is timed from
the start of batch ``warmup`` to the end of the last batch (data loading included), so a
compiled arm's build is left out and reported apart: its first batch less a steady step.

A wait policy holds for a whole process (libgomp reads it when torch loads), so each outer
round starts two processes one after the other: the default policy's (eager, compiled, one
thread, interleaved A/B/A/B in ``inner`` rounds) and the passive policy's (passive, one thread).
One thread waits for no partner under any policy: its arm in both processes says how much the
load moved between them. Numerics: every arm's logits on one seeded probe batch after its first
step and after its first ``warmup + steps`` steps, from the same initial weights and batches,
against eager's. An inductor cache of the section's own makes the first compiled build cold.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# shape -> the study whose claims teachers have it
SHAPES = {"n64": "full", "n196": "paper_grid"}
# process -> arm -> (overrides on top of the study's teacher overrides, torch threads or None)
DEFAULT_ARMS = {"eager": ([], None), "compiled": (["model.compile=true"], None),
                "one_thread": ([], 1)}  # fmt: skip
POLICY_ARMS = {"passive": ([], None), "one_thread": ([], 1)}
PROBE = 256  # probe images for the numerics


@contextlib.contextmanager
def _hydra() -> Iterator[None]:
    """The package's configs (an initialised Hydra is reused, as ``teacher_config`` does)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_module("winft_lightning.conf", version_base="1.3"):
        yield


def study_config(study: str):
    """The composed ``study`` config (``python -m winft_lightning.study study=<study>``)."""
    from hydra import compose

    with _hydra():
        return compose(config_name="study", overrides=[f"study={study}"]).study


def study_teacher(study: str, extra: list[str] = (), root_dir: Path | None = None):
    """The study's claims teacher of its first seed with ``extra`` overrides: (its train
    config, the shard set it trains on), the shards built (or reused) as the study builds them."""
    from winft_lightning.stages.cache import ensure_shards, ensure_teacher_shards
    from winft_lightning.stages.teachers import teacher_config

    spec = study_config(study).claims.teachers
    with _hydra():
        cfg = teacher_config(spec.experiment, [*spec.overrides, *extra], int(spec.seeds[0]),
                             root_dir)  # fmt: skip
    return cfg, ensure_teacher_shards(cfg, ensure_shards(cfg))


def _step_clock(warmup: int, last: int, probe: bool):
    """Lightning callback: wall and process CPU time from the start of batch ``warmup`` to the
    end of batch ``last``, the wall time of batch 0 (a compiled arm's build) and, if ``probe``,
    the module's :func:`probe_logits` after that first step."""
    import lightning as L

    class StepClock(L.Callback):
        start = end = cpu_start = cpu_end = first_start = first = 0.0
        after_one = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 0:
                self.first_start = time.perf_counter()
            if batch_idx == warmup:
                self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == 0:
                self.first = time.perf_counter() - self.first_start
                self.after_one = probe_logits(pl_module) if probe else None
            if batch_idx == last:
                self.end, self.cpu_end = time.perf_counter(), time.process_time()

    return StepClock()


def _per_step_callbacks(job) -> list:
    """The job's callbacks less those that act at validation or after the fit (checkpoints,
    figures, progress bars): the ones a training step runs."""
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

    from winft_lightning.lit.callbacks import InteractionFigures, instantiate_callbacks

    drop = (ModelCheckpoint, InteractionFigures, ProgressBar)
    return [cb for cb in instantiate_callbacks(job) if not isinstance(cb, drop)]


def fit_steps(job, shards: Path, module, warmup: int, steps: int, probe: Path | None = None):
    """``warmup + steps`` training steps of ``module`` on ``job``'s data in a Trainer of
    ``job``'s trainer config: the timed steps' images/s and CPU seconds, batch 0's seconds;
    ``probe``: :func:`probe_logits` after the first step and the last saved as
    ``<probe>_1.pt`` and ``<probe>_n.pt``."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from winft_lightning.lit.loggers import instantiate_loggers
    from winft_lightning.stages.train import make_datamodule

    clock = _step_clock(warmup, warmup + steps - 1, probe is not None)
    trainer_cfg = OmegaConf.to_container(job.trainer, resolve=True)
    trainer_cfg.update(
        max_steps=warmup + steps, limit_val_batches=0, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=False,
    )  # fmt: skip
    trainer = instantiate(
        trainer_cfg,
        callbacks=[*_per_step_callbacks(job), clock],
        logger=instantiate_loggers(job, Path(job.paths.output_dir)) or False,
    )
    trainer.fit(module, datamodule=make_datamodule(job.data, shards, module))
    wall = clock.end - clock.start
    if probe is not None:
        torch.save(clock.after_one, f"{probe}_1.pt")
        torch.save(probe_logits(module), f"{probe}_n.pt")
    return {
        "images_per_s": steps * int(job.data.batch_size) / wall,
        "cpu_s_per_step": (clock.cpu_end - clock.cpu_start) / steps,
        "step_s": wall / steps,
        "first_batch_s": clock.first,
    }


def _recipe(job, shards: Path) -> dict[str, Any]:
    """What of a teacher job its speed depends on, and its train images an epoch."""
    from winft_lightning.data.datamodule import ShardDataModule

    net = job.model.net
    side = net.img_size // net.patch_size
    train = ShardDataModule(root=str(shards)).counts["train"]
    return {
        "N": side * side, "img_size": net.img_size, "patch_size": net.patch_size,
        "embed_dim": net.embed_dim, "depth": net.depth, "num_heads": net.num_heads,
        "batch_size": int(job.data.batch_size), "num_workers": int(job.data.num_workers),
        "compile": bool(job.model.compile), "max_epochs": int(job.trainer.max_epochs),
        "lr": float(job.model.optimizer.lr), "train_images": train,
    }  # fmt: skip


def _arm_job(study: str, extra: list[str], run_dir: Path):
    """(the teacher job of ``study`` with ``extra``, its shards, its LightningModule)."""
    import torch
    from hydra.utils import instantiate

    from winft_lightning.stages.cache import teacher_job

    cfg, shards = study_teacher(study, extra)
    job = teacher_job(cfg, shards, run_dir)
    torch.manual_seed(int(job.seed))
    return job, shards, instantiate(job.model, _convert_="all")


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[int]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def probe_logits(module):
    """``module``'s eager net on a seeded batch of ``PROBE`` images (eval mode, no grad)."""
    import torch

    side = int(module.net.patch_embed.img_size[0])
    g = torch.Generator().manual_seed(0)
    images = torch.randn(PROBE, 3, side, side, generator=g)
    module.net.eval()
    with torch.no_grad():
        out = module.net(images)
    module.net.train()
    return out


def measure_arms(spec: dict[str, Any]) -> dict[str, Any]:
    """This process's arms (``spec["arms"]``: name -> (overrides, threads)) of ``spec["study"]``'s
    teacher, interleaved in ``spec["inner"]`` rounds (one module an arm, fitted again each round:
    a compiled arm builds once); each arm's probe logits after the first step and the last of
    its first round saved as ``<probe_dir>/<tag>_<arm>_{1,n}.pt``."""
    arms = {name: tuple(arm) for name, arm in spec["arms"].items()}
    out: dict[str, Any] = {name: {"overrides": arms[name][0], "rounds": []} for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        built = {name: _arm_job(spec["study"], extra, Path(tmp) / name)
                 for name, (extra, _) in arms.items()}  # fmt: skip
        for r in range(spec["inner"]):
            for name, (_, threads) in arms.items():
                job, shards, module = built[name]
                probe = Path(spec["probe_dir"]) / f"{spec['tag']}_{name}" if r == 0 else None
                with _threads(threads) as n:
                    row = fit_steps(job, shards, module, spec["warmup"], spec["steps"], probe)
                row["threads"] = n
                out[name]["rounds"].append(row)
                print(f"teacher {spec['study']} {spec['tag']} round {r} {name}: "
                      f"{row['images_per_s']:.1f} img/s", flush=True)  # fmt: skip
        for name in arms:
            out[name]["recipe"] = _recipe(*built[name][:2])
    return out


def child_main(spec_json: str) -> None:
    """``python -m bench.sec_teacher '<spec>'``: :func:`measure_arms`, printed as one
    ``RESULT <json>`` line."""
    result = measure_arms(json.loads(spec_json))
    result["_omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    print("RESULT " + json.dumps(result), flush=True)


def run_child(spec: dict[str, Any], policy: str | None, **extra_env: str) -> dict[str, Any]:
    """:func:`measure_arms` of ``spec`` in a new process whose ``OMP_WAIT_POLICY`` is ``policy``
    (None: the runtime's default), with ``extra_env``, its progress lines passed on; with the
    machine's 1-minute load average before and after."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | extra_env
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    argv = [sys.executable, "-m", "bench.sec_teacher", json.dumps(spec)]
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        result = None
        for line in proc.stdout:
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT ") :])
            elif line.startswith("teacher "):
                print(line, end="", flush=True)
        if proc.wait() or result is None:
            err.seek(0)
            raise RuntimeError(f"{spec['tag']} exited {proc.returncode}: {err.read()[-2000:]}")
    result["_load_1min"] = [load, os.getloadavg()[0]]
    return result


def _median(runs: list[dict], arm: str, key: str = "images_per_s") -> float:
    return statistics.median(row[key] for run in runs for row in run[arm]["rounds"])


def _numerics(probe_dir: Path, steps: int) -> dict[str, Any]:
    """Max |logit - eager's| on the probe batch after the same first step and first ``steps``
    steps (same initial weights and batches), per arm."""
    import torch

    out: dict[str, Any] = {"after_steps": [1, steps]}
    for when in ("1", "n"):
        ref = torch.load(probe_dir / f"default0_eager_{when}.pt")
        out.setdefault("eager_logit_max_abs", []).append(float(ref.abs().max()))
        for tag, arm in (("default0", "compiled"), ("default0", "one_thread"),
                         ("policy0", "passive")):  # fmt: skip
            diff = (torch.load(probe_dir / f"{tag}_{arm}_{when}.pt") - ref).abs().max()
            out.setdefault(f"{arm}_max_abs_logit_diff", []).append(float(diff))
    out["passive_bitwise_equal"] = not any(out["passive_max_abs_logit_diff"])
    return out


def _summary(default: list[dict], passive: list[dict], recipe: dict) -> dict[str, Any]:
    """Medians over every round, the ratios to eager and the projected minutes a teacher."""
    ips = {"eager": _median(default, "eager"), "compiled": _median(default, "compiled"),
           "one_thread": _median(default, "one_thread"), "passive": _median(passive, "passive"),
           "passive_process_one_thread": _median(passive, "one_thread")}  # fmt: skip
    step = _median(default, "compiled", "step_s")
    # one per outer round: the first on an empty inductor cache, the others on its files
    warm = [max(run["compiled"]["rounds"][0]["first_batch_s"] - step, 0.0) for run in default]
    images = recipe["max_epochs"] * recipe["train_images"]
    eager, passive = ips["eager"], ips["passive"]
    minutes = {
        arm: images / ips[arm] / 60 for arm in ("eager", "compiled", "passive", "one_thread")
    }
    return {
        "images_per_s": ips,
        "ratio_passive_to_eager": passive / eager,
        "ratio_compiled_to_eager": ips["compiled"] / eager,
        "ratio_one_thread_to_eager": ips["one_thread"] / eager,
        "ratio_passive_to_eager_load_adjusted": (passive / ips["passive_process_one_thread"])
        / (eager / ips["one_thread"]),
        "compile_warmup_s": warm,
        "projected_train_minutes": minutes,
    }


def shape_section(study: str, opts: argparse.Namespace, policy: str) -> dict[str, Any]:
    """One shape: ``outer`` rounds of (default-policy process, passive-policy process)."""
    quick = getattr(opts, "quick", False)
    outer, inner, warmup, steps = (1, 1, 1, 2) if quick else (2, 2, 2, 6)
    runs: dict[str, list[dict]] = {"default": [], "passive": []}
    with tempfile.TemporaryDirectory() as probes:
        spec = {"study": study, "inner": inner, "warmup": warmup, "steps": steps,
                "probe_dir": probes}  # fmt: skip
        cache = str(Path(probes) / "inductor")  # empty in the first round: a cold build
        for r in range(outer):
            runs["default"].append(run_child({**spec, "tag": f"default{r}", "arms": DEFAULT_ARMS},
                                             None, TORCHINDUCTOR_CACHE_DIR=cache))  # fmt: skip
            runs["passive"].append(run_child({**spec, "tag": f"policy{r}", "arms": POLICY_ARMS},
                                            policy))  # fmt: skip
        numerics = _numerics(Path(probes), warmup + steps)
    recipe = runs["default"][0]["eager"]["recipe"]
    return {
        "recipe": recipe,
        **_summary(runs["default"], runs["passive"], recipe),
        "numerics": numerics,
        "rounds": {"outer": outer, "inner": inner, "warmup_steps": warmup, "timed_steps": steps},
        "runs": runs,
    }


def teacher_section(device, opts: argparse.Namespace) -> dict[str, Any]:
    """Both teacher shapes (N = 64, N = 196) on CPU: eager (the runtime's wait policy) vs
    OpenMP's passive wait policy, compiled and one thread; ``study_setting`` records what
    ``study.omp_wait_policy`` the studies use (null: the runtime's)."""
    policy = "passive"
    out: dict[str, Any] = {
        "passive": "OMP_WAIT_POLICY=PASSIVE (what study.omp_wait_policy=passive sets), 2 threads",
        "eager": "the study's teacher job: the runtime's wait policy, 2 threads",
        "study_setting": study_config("full").get("omp_wait_policy"),
        "timing": "real Trainer.fit of the study's teacher job on its Fashion-MNIST shards, "
        "steady steps after the warm-up ones (data loading included)",
        "load_1min_at_start": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }
    for shape, study in SHAPES.items():
        out[shape] = shape_section(study, opts, str(policy).upper())
        print(f"teacher {shape}: eager {out[shape]['images_per_s']['eager']:.1f} img/s, passive "
              f"{out[shape]['images_per_s']['passive']:.1f} img/s "
              f"(x{out[shape]['ratio_passive_to_eager']:.2f})", flush=True)  # fmt: skip
    return out


if __name__ == "__main__":
    child_main(sys.argv[1])
