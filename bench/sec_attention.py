"""``attention`` section: one attention layer's core, forward + backward, dense vs AWD.

At B/16 384 (N = 576) and CUB 448 (N = 784), batch 32, 12 heads of 64, bf16, on teacher-like
windows (``benchlib.local_windows``) at alpha 0.05 / 0.1 / 0.2:
  * dense SDPA (flash; cuDNN and the default backend beside it), the AWD dense boolean mask
    through SDPA, and FlexAttention block-sparse (``torch.compile(flex_attention)``) for several
    token orders and block sizes, plus the same flex kernel on full windows (its dense cost);
  * block density (visited / total blocks) per token order and block size, beside the token
    density (allowed / all token pairs, what an ideal kernel would pay);
  * the cost of building the per-batch ``BlockMask`` (our dense-broadcast builder, eager and
    compiled ``create_block_mask``) and the dense SDPA mask, beside the kernel time.
q, k, v are random and stand in kernel order; the permutation the models apply for the
prefix-last order is timed on its own (``permute_overhead``). On CPU only the densities and mask
costs are measured (flex has no CPU backward).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import flex_attention

from bench.benchlib import ALPHA, cuda_time, local_windows, timeit
from winft_lightning.models import NetSpec, awd_attn_mask, awd_block_mask, tiled_order
from winft_lightning.models.sparse import flex_kernel_options

GRIDS = {"b16_384": (24, 24), "cub_448": (28, 28)}
ALPHAS = (0.05, 0.1, 0.2)
HEADS, HEAD_DIM, BATCH = 12, 64, 32
ORDERS = {"prefix_last": 0, "timm": -1, "tiled_4": 4, "tiled_8": 8}
DENSITY_BLOCKS = (128, 64, 32, 16, (128, 64), (64, 32))
# (order, block) pairs whose kernels are timed; each block size is one compile per N
KERNELS = (("prefix_last", 128), ("timm", 128))  # fwd + bwd, every alpha
# blocks below 128: forward timed; the backward is attempted once (in torch 2.11 inductor's
# backward lowering rejects every tile config for sparse blocks < 128: NoValidChoicesError)
SMALL = (("timm", 64), ("tiled_4", 16))
GOAL = 0.5  # AWD core / dense SDPA at N = 784, alpha 0.1
LAYERS = 12  # the per-batch mask is shared by the 12 blocks of a B/16


def _name(order: str, block) -> str:
    b = block if isinstance(block, int) else f"{block[0]}x{block[1]}"
    return f"{order}_b{b}"


def _ctx(grid, order: str, block) -> NetSpec:
    tile = ORDERS[order]
    return NetSpec(
        grid=grid, num_prefix_tokens=1, attn="awd", sparse=True, tile=tile, block_size=block
    )


def _density(bm) -> tuple[float, float]:
    """(visited / total blocks, full / total blocks) of a BlockMask."""
    total = bm.kv_indices.shape[0] * bm.kv_indices.shape[2] * bm.kv_indices.shape[3]
    full = bm.full_kv_num_blocks.sum().item()
    return (bm.kv_num_blocks.sum().item() + full) / total, full / total


def density_table(wins: dict, grid, device) -> dict:
    """Block density per order / block size / alpha, and the token density per alpha."""
    out: dict = {"token_density": {}}
    for a, w in wins.items():
        mask = awd_attn_mask(w.to(device), grid, 1)
        out["token_density"][str(a)] = round(mask.float().mean().item(), 4)
    for order in ORDERS:
        for block in DENSITY_BLOCKS:
            row = {}
            for a, w in wins.items():
                bm = awd_block_mask(w.to(device), None, _ctx(grid, order, block), "dense")
                visited, full = _density(bm)
                row[str(a)] = {"visited": round(visited, 4), "full": round(full, 4)}
            out[_name(order, block)] = row
    return out


def mask_build(w, grid, device, repeat: int) -> dict:
    """Seconds to build one batch's masks (alpha 0.1): the BlockMask by each builder (dense
    broadcast, eager and compiled ``create_block_mask``), and the dense SDPA mask."""
    timer = (lambda fn: cuda_time(fn, repeat)) if device.type == "cuda" else timeit
    w = w.to(device)
    out = {"dense_sdpa_mask_s": timer(lambda: awd_attn_mask(w, grid, 1))}
    for order, block in KERNELS + SMALL:
        ctx = _ctx(grid, order, block)
        row = {"dense_builder_s": timer(lambda ctx=ctx: awd_block_mask(w, None, ctx, "dense"))}
        row["create_block_mask_eager_s"] = timeit(
            lambda ctx=ctx: awd_block_mask(w, None, ctx, builder="mask_mod"), max(2, repeat // 5)
        )
        if device.type == "cuda" and block == 128:
            row.update(_compiled_builder(w, ctx, repeat))
        out[_name(order, block)] = row
    return out


def _compiled_builder(w, ctx, repeat: int) -> dict:
    """``torch.compile(create_block_mask)`` (the models' CUDA builder): first call, steady."""
    try:
        start = time.perf_counter()
        awd_block_mask(w, None, ctx, builder="compiled")
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        steady = cuda_time(lambda: awd_block_mask(w, None, ctx, builder="compiled"), repeat)
        return {"create_block_mask_compiled_s": steady, "compiled_first_call_s": first}
    except Exception as e:  # recorded in the JSON, the section goes on
        return {"create_block_mask_compiled_error": f"{type(e).__name__}: {e}"[:300]}


def _fwd_bwd(op, q, k, v, do):
    def run():
        out = op(q, k, v)
        torch.autograd.grad(out, (q, k, v), do)

    return run


def _sdpa(backend=None, mask=None):
    def op(q, k, v):
        ctx = sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()
        with ctx:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return op


def _flex_op(compiled, bm, block, perm=None):
    opts = flex_kernel_options(block)
    extra = {"kernel_options": opts} if opts else {}
    inv = None if perm is None else torch.argsort(perm)

    def op(q, k, v):
        if perm is not None:
            q, k, v = q[:, :, perm], k[:, :, perm], v[:, :, perm]
        o = compiled(q, k, v, block_mask=bm, **extra)
        return o if perm is None else o[:, :, inv]

    return op


def kernels(wins: dict, grid, repeat: int) -> dict:
    """fwd + bwd seconds of each attention core on [B, H, T, d] bf16."""
    dev = torch.device("cuda")
    t = 1 + grid[0] * grid[1]
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (BATCH, HEADS, t, HEAD_DIM)
    q, k, v = (
        torch.randn(shape, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
        for _ in range(3)
    )
    do = torch.randn(shape, device=dev, dtype=torch.bfloat16, generator=g)
    out: dict = {}
    for name, backend in (
        ("sdpa_flash", SDPBackend.FLASH_ATTENTION),
        ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
        ("sdpa_default", None),
    ):
        try:
            out[f"{name}_s"] = cuda_time(_fwd_bwd(_sdpa(backend), q, k, v, do), repeat)
        except Exception as e:
            out[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
    for a, w in wins.items():
        mask = awd_attn_mask(w.to(dev), grid, 1)
        out[f"awd_dense_mask_a{a}_s"] = cuda_time(_fwd_bwd(_sdpa(None, mask), q, k, v, do), repeat)
    full_win = torch.tensor([0, 0, grid[1] - 1, grid[0] - 1]).expand_as(wins[ALPHA])
    fn = torch.compile(flex_attention, dynamic=False)
    out["flex_noop_mask_s"] = cuda_time(_fwd_bwd(lambda q, k, v: fn(q, k, v), q, k, v, do), repeat)
    for order, block in KERNELS:
        ctx = _ctx(grid, order, block)
        name = _name(order, block)
        try:
            start = time.perf_counter()
            bm = awd_block_mask(full_win.to(dev), None, ctx, "dense")
            _fwd_bwd(_flex_op(fn, bm, block), q, k, v, do)()
            torch.cuda.synchronize()
            out[f"flex_{name}_first_call_s"] = time.perf_counter() - start
            out[f"flex_{name}_full_windows_s"] = cuda_time(
                _fwd_bwd(_flex_op(fn, bm, block), q, k, v, do), repeat
            )
            for a, w in wins.items():
                bm = awd_block_mask(w.to(dev), None, ctx, "dense")
                op = _flex_op(fn, bm, block)
                out[f"flex_{name}_a{a}_s"] = cuda_time(_fwd_bwd(op, q, k, v, do), repeat)
            if ORDERS[order] >= 0:  # the models' gathers in and out of this order
                perm = tiled_order(grid, 1, ORDERS[order]).to(dev)
                bm = awd_block_mask(wins[ALPHA].to(dev), None, ctx, "dense")
                t_perm = cuda_time(_fwd_bwd(_flex_op(fn, bm, block, perm), q, k, v, do), repeat)
                out[f"flex_{name}_a{ALPHA}_with_permute_s"] = t_perm
        except Exception as e:  # recorded, the section goes on
            out[f"flex_{name}_error"] = f"{type(e).__name__}: {e}"[:400]
    out.update(_small_blocks(fn, wins[ALPHA].to(dev), grid, q, k, v, do, repeat))
    return out


def _small_blocks(fn, w, grid, q, k, v, do, repeat: int) -> dict:
    """Forward seconds (no grad) of blocks below 128 at alpha 0.1, beside flash's and the
    128-block forward; then one fwd + bwd attempt (its error, if any, is the finding)."""
    out = {}
    with torch.no_grad():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out["sdpa_flash_fwd_s"] = cuda_time(lambda: F.scaled_dot_product_attention(q, k, v))
        for order, block in (("timm", 128), *SMALL):
            name = _name(order, block)
            try:
                op = _flex_op(fn, awd_block_mask(w, None, _ctx(grid, order, block), "dense"), block)
                out[f"flex_{name}_a{ALPHA}_fwd_s"] = cuda_time(lambda op=op: op(q, k, v), repeat)
            except Exception as e:  # recorded
                out[f"flex_{name}_fwd_error"] = f"{type(e).__name__}: {e}"[:300]
    order, block = SMALL[0]
    try:
        op = _flex_op(fn, awd_block_mask(w, None, _ctx(grid, order, block), "dense"), block)
        out[f"flex_{_name(order, block)}_a{ALPHA}_s"] = cuda_time(_fwd_bwd(op, q, k, v, do), repeat)
    except Exception as e:  # recorded
        out[f"flex_{_name(order, block)}_error"] = f"{type(e).__name__}: {e}"[:300]
    return out


def summarize(row: dict) -> dict:
    """Ratios to dense SDPA flash, the best sparse config per alpha, and what limits it."""
    k, dens, build = row["kernels"], row["density"], row["mask_build"]
    flash = k.get("sdpa_flash_s")
    if not flash:
        return {}
    ratios: dict = {"awd_dense_mask": {}, "flex": {}}
    for a in ALPHAS:
        ratios["awd_dense_mask"][str(a)] = k[f"awd_dense_mask_a{a}_s"] / flash
    best = {}
    for a in ALPHAS:
        per = {}
        for order, block in KERNELS + SMALL:
            key = f"flex_{_name(order, block)}_a{a}_s"
            if key in k:
                per[_name(order, block)] = k[key] / flash
        ratios["flex"][str(a)] = per
        if per:
            best[str(a)] = min(per, key=per.get)
    out = {"ratio_is": "fwd+bwd seconds / dense SDPA flash fwd+bwd seconds", "ratios": ratios}
    if str(ALPHA) not in best:
        return out
    cfg = best[str(ALPHA)]
    ratio = ratios["flex"][str(ALPHA)][cfg]
    density = dens[cfg][str(ALPHA)]["visited"]
    kernel_factor = k.get("flex_noop_mask_s", float("nan")) / flash
    full_s = k.get(f"flex_{cfg}_full_windows_s", float("nan"))
    per_block = k[f"flex_{cfg}_a{ALPHA}_s"] / (density * k.get("flex_noop_mask_s", float("nan")))
    build_row = build.get(cfg, {})
    build_s = build_row.get("create_block_mask_compiled_s", build_row.get("dense_builder_s"))
    kernel_s = k[f"flex_{cfg}_a{ALPHA}_s"]
    out.update(
        {
            "best_config_per_alpha": best,
            f"best_at_{ALPHA}": {
                "config": cfg,
                "ratio_to_flash": ratio,
                "block_density": density,
                "token_density": dens["token_density"][str(ALPHA)],
                "flex_no_mask_over_flash": kernel_factor,
                "flex_full_windows_over_flash": full_s / flash,
                "sparse_cost_per_visited_block_over_no_mask": per_block,
                "mask_build_s": build_s,
                "mask_build_over_one_layer_kernel": None if not build_s else build_s / kernel_s,
                "mask_build_over_12_layers_kernel": (
                    None if not build_s else build_s / (LAYERS * kernel_s)
                ),
                "decomposition": "ratio = block_density x flex_no_mask/flash x per-block factor",
            },
        }
    )
    return out


def _verdict(summary: dict, n: int) -> dict:
    best = summary.get(f"best_at_{ALPHA}")
    if not best:
        return {}
    ratio, density = best["ratio_to_flash"], best["block_density"]
    limits = []
    if density > GOAL:
        limits.append(f"block density {density:.2f} > {GOAL} even with a free kernel")
    if density * best["flex_no_mask_over_flash"] > GOAL:
        limits.append(
            f"kernel efficiency: flex without a mask costs {best['flex_no_mask_over_flash']:.2f}x"
            f" flash, and a visited block {best['sparse_cost_per_visited_block_over_no_mask']:.2f}x"
            " an unmasked one"
        )
    share = best["mask_build_over_12_layers_kernel"]
    if share is not None and ratio * (1 + share) > GOAL and ratio <= GOAL:
        limits.append(f"mask building adds {share:.2f}x of 12 layers' kernels")
    return {
        "goal": f"AWD core fwd+bwd <= {GOAL}x dense SDPA at N = 784, alpha {ALPHA}",
        "N": n,
        "ratio": ratio,
        "holds": ratio <= GOAL,
        "limited_by": limits,
    }


def attention_section(device: torch.device, opts: argparse.Namespace) -> dict:
    repeat = max(opts.repeat * 4, 10)
    result: dict = {
        "batch": BATCH,
        "heads": HEADS,
        "head_dim": HEAD_DIM,
        "dtype": "bfloat16",
        "alphas": list(ALPHAS),
        "orders": ORDERS,
        "timing": f"CUDA events, median of {repeat} fwd+bwd calls after 3 warm-up calls",
    }
    for geo, grid in GRIDS.items():
        n = grid[0] * grid[1]
        batch = BATCH if device.type == "cuda" else 2
        wins, _, info = local_windows(batch, grid, ALPHAS)
        row: dict = {"N": n, "tokens": n + 1, "batch": batch, "windows": info}
        row["density"] = density_table(wins, grid, device)
        row["mask_build"] = mask_build(wins[ALPHA], grid, device, repeat)
        if device.type == "cuda":
            row["kernels"] = kernels(wins, grid, repeat)
            row["summary"] = summarize(row)
            if geo == "cub_448":
                result["goal"] = _verdict(row["summary"], n)
        else:
            row["kernels"] = "skipped: FlexAttention has no CPU backward"
        result[geo] = row
        print(f"attention {geo}: {row.get('summary', {}).get(f'best_at_{ALPHA}')}", flush=True)
    return result
