"""Why is compiled FlexAttention slow here? One attention core at CUB 448 (N = 784), batch 32,
12 heads of 64, bf16: forward and backward apart, the kernels a profiler sees, kernel options,
max-autotune, mask_mod variants, and whether blocks below 128 compile their backward.

    python -m bench.flex_probe --out probe.json [--budget 240]

Each variant is one compile; variants run in order until ``--budget`` seconds have passed.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import flex_attention

from bench.benchlib import cuda_time, local_windows
from winft_lightning.models import NetSpec, awd_block_mask, block_mask_from_dense
from winft_lightning.models.sparse import awd_tables

GRID = (28, 28)
B, H, D = 32, 12, 64


def _ctx(block=128, tile=0) -> NetSpec:
    return NetSpec(
        grid=GRID, num_prefix_tokens=1, attn="awd", sparse=True, tile=tile, block_size=block
    )


def _mask_mod_int32(tab):
    win, kx, ky = tab["win"].int(), tab["kx"].int(), tab["ky"].int()
    free = tab["free"]

    def mask_mod(bi, hi, qi, ki):
        x, y = kx[ki], ky[ki]
        inside = (x >= win[bi, qi, 0]) & (x <= win[bi, qi, 2])
        inside = inside & (y >= win[bi, qi, 1]) & (y <= win[bi, qi, 3])
        return inside | free[ki] | (qi == ki)

    return mask_mod


def _dense_lookup(bm_ref, tab):
    """The same BlockMask, its mask_mod a lookup in the dense [B, T, T] bool mask."""
    from winft_lightning.models.sparse import _awd_dense

    dense = _awd_dense(tab)

    def mask_mod(bi, hi, qi, ki):
        return dense[bi, qi, ki]

    return block_mask_from_dense(dense, mask_mod, bm_ref.BLOCK_SIZE)


def _profile(fn) -> list:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        cuda_us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if cuda_us > 20:
            rows.append({"name": e.key[:90], "cuda_us": round(cuda_us, 1), "calls": e.count})
    rows.sort(key=lambda r: -r["cuda_us"])
    wall = cuda_time(fn, 10)
    return {"fn_wall_ms": wall * 1e3, "kernels": rows[:12]}


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name}")
    parser.add_argument("--out", default="outputs/flex_probe.json")
    parser.add_argument("--budget", type=float, default=240)
    args = parser.parse_args()
    t0 = time.perf_counter()
    import torch._dynamo  # every variant recompiles flex_attention: keep all of them compiled

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    dev = torch.device("cuda")
    wins, _, info = local_windows(B, GRID, (0.1,))
    win = wins[0.1].to(dev)
    t = 1 + GRID[0] * GRID[1]
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(B, H, t, D, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
        for _ in range(3)
    )
    do = torch.randn(B, H, t, D, device=dev, dtype=torch.bfloat16, generator=g)
    out: dict = {"windows": info, "tokens": t}
    full = torch.tensor([0, 0, GRID[1] - 1, GRID[0] - 1], device=dev).expand_as(win)
    bm_full = awd_block_mask(full, None, _ctx())
    bm = awd_block_mask(win, None, _ctx())

    def fwd_bwd(op):
        def run():
            o = op()
            torch.autograd.grad(o, (q, k, v), do)

        return run

    def fwd(op):
        def run():
            with torch.no_grad():
                op()

        return run

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        flash = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
        out["flash_fwd_ms"] = cuda_time(fwd(flash), 20) * 1e3
        out["flash_fwd_bwd_ms"] = cuda_time(fwd_bwd(flash), 20) * 1e3
        out["flash_profile"] = _profile(fwd_bwd(flash))
    print(json.dumps({key: val for key, val in out.items() if "ms" in key}), flush=True)

    tab = awd_tables(win, None, _ctx())
    bm32 = awd_block_mask(win, None, _ctx())
    bm32.mask_mod = _mask_mod_int32(tab)
    variants = [
        ("noop_mask", None, {}, "default"),
        ("full_windows", bm_full, {}, "default"),
        ("awd_a0.1", bm, {}, "default"),
        ("awd_a0.1_int32_tables", bm32, {}, "default"),
        ("awd_a0.1_dense_lookup", _dense_lookup(bm, tab), {}, "default"),
        ("full_windows_w8_s2", bm_full, {"num_warps": 8, "num_stages": 2}, "default"),
        (
            "full_windows_small_tiles",
            bm_full,
            {
                "BLOCK_M": 64,
                "BLOCK_N": 64,
                "BLOCK_M1": 32,
                "BLOCK_N1": 64,
                "BLOCK_M2": 64,
                "BLOCK_N2": 32,
            },
            "default",
        ),
        ("full_windows_tma", bm_full, {"USE_TMA": True}, "default"),
        ("b64_awd_a0.1", awd_block_mask(win, None, _ctx(64)), {}, "default"),
        ("full_windows_max_autotune", bm_full, {}, "max-autotune-no-cudagraphs"),
        (
            "b64_awd_a0.1_max_autotune",
            awd_block_mask(win, None, _ctx(64)),
            {},
            "max-autotune-no-cudagraphs",
        ),
    ]
    for name, block_mask, opts, mode in variants:
        if time.perf_counter() - t0 > args.budget:
            out[name] = "skipped: budget"
            continue
        try:
            fn = torch.compile(
                flex_attention, dynamic=False, mode=None if mode == "default" else mode
            )
            extra = {"kernel_options": opts} if opts else {}

            def op(fn=fn, block_mask=block_mask, extra=extra):
                return fn(q, k, v, block_mask=block_mask, **extra)

            start = time.perf_counter()
            fwd_bwd(op)()
            torch.cuda.synchronize()
            row = {"compile_s": time.perf_counter() - start}
            row["fwd_ms"] = cuda_time(fwd(op), 20) * 1e3
            row["fwd_bwd_ms"] = cuda_time(fwd_bwd(op), 20) * 1e3
            row["over_flash"] = row["fwd_bwd_ms"] / out["flash_fwd_bwd_ms"]
            if name in ("full_windows", "awd_a0.1"):
                row["profile"] = _profile(fwd_bwd(op))
            out[name] = row
        except Exception as e:  # recorded, the probe goes on
            out[name] = {
                "error": f"{type(e).__name__}: {e}"[:600],
                "tb": traceback.format_exc()[-800:],
            }
        print(
            name,
            json.dumps({key: val for key, val in out[name].items() if key != "profile"})[:400],
            flush=True,
        )
        Path(args.out).write_text(json.dumps(out, indent=1))
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
