"""``memory`` section: peak memory of one training step per module at the same batch (CUDA:
allocator peak; CPU: RSS high-water mark in a fresh process per module), and WinfT's peak over
ViT's against its target (``benchlib.MEMORY_TARGETS``)."""

from __future__ import annotations

import argparse
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from bench.benchlib import (
    B16_384,
    MEMORY_TARGETS,
    NO_CPU_BACKWARD,
    TRAIN_BATCH,
    VARIANTS,
    WIDTHS,
    _grid,
    _sync,
    build_module,
    flex_kernel,
    local_masks,
    ratio_targets,
    synthetic_batch,
    train_step,
)


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def memory_child(variant: str, net: dict, masks: dict, batch: int) -> dict:
    """Run in a fresh process: build ``variant``, reset the RSS high-water mark, one CPU
    training step; returns RSS before and the peak during the step. (``ru_maxrss`` would not
    do: Linux keeps it across the spawn's execve, so it starts at the parent's peak.)"""
    module = build_module(variant, net, torch.device("cpu"))
    data = synthetic_batch(batch, net, masks, torch.device("cpu"))
    step = train_step(module, data, torch.device("cpu"))
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    step()
    peak = _status_bytes("VmHWM")
    return {"rss_before_step_bytes": before, "peak_rss_bytes": peak, "peak_bytes": peak - before}


def _cuda_memory(variant: str, net: dict, data: dict, device: torch.device) -> dict:
    """Peak allocated bytes of one steady-state training step (after a warm-up step)."""
    module = build_module(variant, net, device)
    step = train_step(module, data, device)
    step()
    _sync()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    _sync()
    peak = torch.cuda.max_memory_allocated(device)
    del module, step
    torch.cuda.empty_cache()
    return {"allocated_before_step_bytes": before, "peak_allocated_bytes": peak}


def memory_section(device: torch.device, opts: argparse.Namespace) -> dict:
    """Peak memory of one training step per module, B/16 384 geometry, same batch and windows."""
    net = {**B16_384, **WIDTHS["vit_base" if device.type == "cuda" else "vit_tiny"]}
    batch = opts.train_batch or TRAIN_BATCH[device.type]
    masks, window_info = local_masks(batch, _grid(net))
    variants = [v for v in VARIANTS if device.type == "cuda" or not VARIANTS[v][1].get("sparse")]
    rows = {}
    if device.type == "cuda":
        method = "torch.cuda.max_memory_allocated over one step after a warm-up step"
        peak_is = "peak allocated bytes during the step (weights, grads, momentum included)"
        data = synthetic_batch(batch, net, masks, device)
        with flex_kernel(device):
            for v in variants:
                rows[v] = _cuda_memory(v, net, data, device)
                rows[v]["peak_bytes"] = rows[v]["peak_allocated_bytes"]
    else:
        method = (
            "fresh spawned process per module: RSS high-water mark (VmHWM, reset through "
            "/proc/self/clear_refs just before the step) minus VmRSS before one training step "
            "(model, batch and windows already built; the step adds activations, grads and "
            "SGD momentum)"
        )
        peak_is = "RSS growth during the step (process baseline ~1 GB of libraries excluded)"
        spawn = multiprocessing.get_context("spawn")
        for v in variants:
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                rows[v] = pool.submit(memory_child, v, net, masks, batch).result()
    for v, row in rows.items():
        row["peak_ratio_to_vit"] = row["peak_bytes"] / rows["vit"]["peak_bytes"]
        print(f"memory: {v}: {row['peak_bytes'] / 2**20:.0f} MiB", flush=True)
    return {
        "net": net,
        "batch": batch,
        "method": method,
        "peak_bytes_is": peak_is,
        "ratio_is": "peak_bytes / ViT peak_bytes",
        "windows": window_info,
        "sparse_on_cpu": None if device.type == "cuda" else NO_CPU_BACKWARD,
        "modules": rows,
        "targets": ratio_targets(
            {v: row["peak_ratio_to_vit"] for v, row in rows.items()}, MEMORY_TARGETS, "peak"
        ),
    }
