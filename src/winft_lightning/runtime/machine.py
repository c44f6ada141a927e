"""What a measured number ran on. Training here is deterministic for a given machine, but not
across machines: the CPU's vector ISA picks torch's kernels, whose float sums round
differently, and a 3-epoch run amplifies that into whole points of top-1. Every results row
and benchmark therefore records the CPU model, its ISA and the library versions."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

LIBRARIES = ("lightning", "timm", "numpy", "triton")
CPUINFO_KEYS = {"model name": "cpu", "cpu family": "cpu_family", "model": "cpu_model"}


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        key, _, value = line.partition(":")
        name = CPUINFO_KEYS.get(key.strip())
        if name and name not in out:
            out[name] = value.strip()
        if not line.strip() and out:
            break  # the first processor's block is enough
    return out


def _version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except Exception:
        return None


def describe(gpu_driver: bool = False) -> dict[str, Any]:
    """The machine as a flat dict: ``cpu`` (model name), ``cpu_family``/``cpu_model`` (from
    /proc/cpuinfo where it exists), ``cpu_isa`` (the kernels torch dispatches to, e.g. AVX2,
    AVX512), ``cpu_threads``, python/torch/library versions, ``date``; with CUDA also the GPU,
    its memory and SM count (and the driver, from nvidia-smi, with ``gpu_driver``)."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine()}
    info.update(_cpuinfo())
    info["cpu_isa"] = torch.backends.cpu.get_cpu_capability()
    info["cpu_threads"] = torch.get_num_threads()
    info["python"] = platform.python_version()
    info["torch"] = torch.__version__
    info.update({name: _version(name) for name in LIBRARIES})
    info["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_sms"] = props.multi_processor_count
        info["cuda_runtime"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        if gpu_driver:
            info["driver"] = _driver()
    return info


def _driver() -> str | None:
    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def summary(info: dict[str, Any] | None = None) -> str:
    """One line, e.g. ``AMD EPYC (family 25 model 1, AVX2), 2 threads, torch 2.14.1``."""
    info = describe() if info is None else info
    cpu = info["cpu"]
    detail = (
        [f"family {info['cpu_family']} model {info['cpu_model']}"] if "cpu_family" in info else []
    )
    detail.append(str(info["cpu_isa"]))
    line = f"{cpu} ({', '.join(detail)}), {info['cpu_threads']} threads, torch {info['torch']}"
    return f"{line}, {info['gpu']}" if info.get("gpu") else line


def trim_heap() -> None:
    """Hand the heap's freed pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).
    A long CPU loop of many differently shaped forwards fragments glibc's per-thread arenas:
    the claims pass grew by ~450 MB a batch without it (16.6 GB peak over 5,000 images), and
    stays flat with it."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
