"""``make bench``: every stage against its limit, ratios measured in one run, one JSON file.

    python bench/run.py [--sections analysis,train,overhead,data,memory] [--out PATH] [--quick]

Sections (each records absolute times and the ratio the target is stated on):
  analysis  U + AWD windows (5 alphas) + DIP order per image vs (a) the softmax(QK^T) of the
            12 blocks it analyses, (b) the teacher's own non-fused forward; B/16 at 224 and 384.
  train     training step (forward + backward + SGD) of each module / the ViT step, dense-mask
            and sparse (flex) paths, plus one attention layer (AWD vs fused full); B/16 at 384
            with local synthetic windows (~23% of N^2 kept, as in the paper at alpha 0.1).
  overhead  ViTModule in a real Trainer vs a plain timm + torch loop (same model, data, batch).
  data      shard loader images/s vs the training step's consumption at the same batch.
  memory    peak memory of one training step per module at the same batch.

On CPU the B/16 geometry (384 px, N = 576) runs with vit_tiny widths and batch 2 so that the
whole bench fits in minutes; ``--quick`` shrinks repeats and steps for a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import winft_lightning
from winft_lightning import interactions as I

ALPHAS = (0.025, 0.05, 0.1, 0.2, 0.5)
ALPHA = 0.1  # the alpha the paper's speed claims are stated at
EO_TARGET = 0.23  # the paper's E_O / N^2 of AWD windows at alpha 0.1
SGD = {"lr": 1e-4, "momentum": 0.9}

B16_384 = {"model_name": "vit_base_patch16_384", "img_size": 384, "patch_size": 16}
WIDTHS = {  # CPU: vit_tiny widths at the B/16 geometry, so the bench fits its budget
    "cuda": {"embed_dim": 768, "depth": 12, "num_heads": 12, "num_classes": 1000},
    "cpu": {"embed_dim": 192, "depth": 12, "num_heads": 3, "num_classes": 1000},
}
TRAIN_BATCH = {"cuda": 32, "cpu": 2}
FMNIST_NET = {
    "model_name": "vit_tiny_patch16_224",
    "img_size": 32,
    "patch_size": 4,
    "num_classes": 10,
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 3,
}
OVERHEAD = {  # device -> (net, batch)
    "cpu": (FMNIST_NET, 64),
    "cuda": ({"model_name": "vit_base_patch16_224", "img_size": 224, "num_classes": 1000}, 64),
}
DIGITS_YAML = Path(winft_lightning.__file__).parent / "conf" / "data" / "digits.yaml"

# name -> (MODULES key, module options)
VARIANTS = {
    "vit": ("vit", {}),
    "awd_dense": ("awd_vit", {"sparse": False}),
    "awd_sparse": ("awd_vit", {"sparse": True}),
    "awd_dip_dense": ("awd_dip_vit", {"sparse": False}),
    "awd_dip_sparse": ("awd_dip_vit", {"sparse": True}),
    "winft_dense": ("winft", {"winft_mode": "multiply"}),
    "winft_neg_inf_dense": ("winft", {"winft_mode": "neg_inf"}),
    "winft_neg_inf_sparse": ("winft", {"winft_mode": "neg_inf", "sparse": True}),
}
# target name -> (variants, largest allowed train-step ratio to the ViT step)
STEP_TARGETS = {
    "awd_step_le_vit": (("awd_dense", "awd_sparse"), 1.0),
    "awd_dip_step_le_vit": (("awd_dip_dense", "awd_dip_sparse"), 1.0),
    "winft_step_le_1.3x_vit": (("winft_dense", "winft_neg_inf_dense", "winft_neg_inf_sparse"), 1.3),
}
NO_CPU_BACKWARD = (
    "FlexAttention has no backward on CPU: the sparse path is measured forward-only "
    "(inference_mode), see forward_s"
)


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of ``fn`` (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def analysis_section(device: torch.device, opts: argparse.Namespace) -> dict:
    """Per-image analysis cost at ViT-B/16 geometry (l = 12, k = 12, head dim 64)."""
    return {f"b16_{img}": _analysis_at(img, device, opts.batch, opts.repeat) for img in (224, 384)}


def _analysis_at(img: int, device: torch.device, batch: int, repeat: int) -> dict:
    import timm

    from winft_lightning.capture import unfused_attention

    grid = (img // 16, img // 16)
    n = grid[0] * grid[1]
    t = n + 1
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(batch, 12, t, 64, generator=g).to(device)
    k = torch.randn(batch, 12, t, 64, generator=g).to(device)
    scale = 64**-0.5

    def attention_maps() -> list[torch.Tensor]:
        return [((q @ k.transpose(-2, -1)) * scale).softmax(-1) for _ in range(12)]

    maps = [m[:, :, 1:, 1:].contiguous() for m in attention_maps()]

    def analysis() -> None:
        u = I.uncertainty_map(iter(maps))
        for alpha in ALPHAS:
            I.awd_windows(u, alpha, grid)
        I.dip_order(u)

    t_attn = timeit(attention_maps, repeat)
    t_analysis = timeit(analysis, repeat)
    model = timm.create_model(f"vit_base_patch16_{img}", pretrained=False).to(device).eval()
    images = torch.randn(batch, 3, img, img, device=device)

    def forward() -> None:
        with torch.inference_mode(), unfused_attention(model):
            model(images)

    t_forward = timeit(forward, max(2, repeat // 2))
    row = {
        "N": n,
        "batch": batch,
        "analysis_s_per_image": t_analysis / batch,
        "attention_softmax_qk_s_per_image": t_attn / batch,
        "teacher_forward_nonfused_s_per_image": t_forward / batch,
        "ratio_analysis_to_attention": t_analysis / t_attn,
        "ratio_analysis_to_forward": t_analysis / t_forward,
        "target": "ratio < 1.0",
    }
    print(
        f"analysis B/16@{img} (N={n}): {1e3 * t_analysis / batch:.1f} ms/img; "
        f"attention maps {1e3 * t_attn / batch:.1f} ms/img (ratio {t_analysis / t_attn:.2f}); "
        f"non-fused forward {1e3 * t_forward / batch:.1f} ms/img (ratio {t_analysis / t_forward:.2f})",
        flush=True,
    )
    return row


# --- shared helpers ---------------------------------------------------------------------


def _sync() -> None:
    """Wait for queued CUDA work (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _grid(net: dict) -> tuple[int, int]:
    """Patch grid ``(h, w)`` of a square net config."""
    side = net["img_size"] // net.get("patch_size", 16)
    return side, side


def local_u(batch: int, grid: tuple[int, int], sigma: float, noise: float, seed: int = 0) -> Tensor:
    """Synthetic local uncertainty ``[B, N, N]``: ``exp(-d_ij^2 / (2 sigma^2) + noise * z_ij)``,
    d the grid distance of patches i and j, z ~ N(0, 1) seeded. The noise is log-normal: with
    additive noise the top entries flip from purely local to near-global within a few tenths of
    sigma, here the window size grows smoothly with sigma."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack((xs.flatten(), ys.flatten()), dim=-1).float()
    d2 = torch.cdist(pos, pos).square()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, h * w, h * w, generator=g)
    return torch.exp(-d2 / (2 * sigma**2) + noise * z)


def eo_fraction(windows: Tensor) -> float:
    """Mean E_O / N^2 of ``[B, N, 4]`` windows."""
    n = windows.shape[1]
    return I.window_areas(windows).sum(dim=1).float().mean().item() / n**2


def calibrate_sigma(grid: tuple[int, int], noise: float, target: float = EO_TARGET) -> float:
    """Bisection for the sigma whose alpha-0.1 windows (one image) keep ``target`` of N^2."""
    lo, hi = 0.5, float(max(grid))
    for _ in range(10):
        mid = (lo + hi) / 2
        if eo_fraction(I.awd_windows(local_u(1, grid, mid, noise), ALPHA, grid)) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def local_masks(batch: int, grid: tuple[int, int], noise: float = 0.5) -> tuple[dict, dict]:
    """Realistic local AWD windows: ``({"windows" [B, N, 4], "dip_order" [B, N]}, info)`` from
    :func:`local_u` at the calibrated sigma; info records sigma and the measured E_O / N^2."""
    sigma = calibrate_sigma(grid, noise)
    u = local_u(batch, grid, sigma, noise, seed=1)
    windows = I.awd_windows(u, ALPHA, grid)
    info = {
        "u": "exp(-d^2 / (2 sigma^2) + noise * z), z ~ N(0, 1), seeded",
        "alpha": ALPHA,
        "sigma": round(sigma, 3),
        "noise": noise,
        "eo_fraction": round(eo_fraction(windows), 4),
        "eo_fraction_paper": EO_TARGET,
        "mean_window_h": (windows[..., 3] - windows[..., 1] + 1).float().mean().item(),
        "mean_window_w": (windows[..., 2] - windows[..., 0] + 1).float().mean().item(),
    }
    return {"windows": windows, "dip_order": I.dip_order(u)}, info


def synthetic_batch(batch: int, net: dict, masks: dict | None, device: torch.device) -> dict:
    """Training batch dict: ``image [B, 3, S, S]``, ``label [B]`` (+ ``windows``, ``dip_order``)."""
    g = torch.Generator().manual_seed(0)
    s = net["img_size"]
    out = {
        "image": torch.randn(batch, 3, s, s, generator=g),
        "label": torch.randint(0, net["num_classes"], (batch,), generator=g),
        **(masks or {}),
    }
    return {k: v.to(device) for k, v in out.items()}


def build_module(variant: str, net: dict, device: torch.device):
    """The LightningModule of ``VARIANTS[variant]`` on ``device``, train mode, seeded init."""
    from winft_lightning.modules import MODULES

    kind, options = VARIANTS[variant]
    torch.manual_seed(0)
    return MODULES[kind](net=net, **options).to(device).train()


def train_step(module, batch: dict, device: torch.device) -> Callable[[], None]:
    """One SGD step of ``module``: forward, its loss (CE, + BCE for WinfT), backward, update."""
    opt = torch.optim.SGD(module.parameters(), **SGD)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device):
            loss = module.model_step(batch, "train")[0]
        loss.backward()
        opt.step()

    return step


def forward_only(module, batch: dict, device: torch.device) -> Callable[[], None]:
    """``module(images, batch)`` under ``inference_mode`` (masks built per call, as in a step)."""

    def forward() -> None:
        with torch.inference_mode(), _autocast(device):
            module(batch["image"], batch)

    return forward


@contextlib.contextmanager
def flex_kernel(device: torch.device) -> Iterator[str]:
    """CUDA: the sparse path runs ``torch.compile(flex_attention)`` (eager flex materialises the
    scores). Yields the kernel's description for the JSON."""
    from winft_lightning.models import attention

    if device.type != "cuda":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch")
            yield "eager flex_attention (materialises the scores; CPU)"
        return
    eager = attention.flex_attention
    attention.flex_attention = torch.compile(eager, dynamic=False)
    try:
        yield "torch.compile(flex_attention)"
    finally:
        attention.flex_attention = eager


# --- train ------------------------------------------------------------------------------


def timeit_interleaved(
    fns: dict[str, Callable[[], object]], repeat: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median wall seconds of each fn, timed in round-robin rounds so that drift (allocator
    warm-up, clocks, a neighbour's load) hits every fn alike (CUDA-synchronised)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _attention_layer(net: dict, masks: dict, batch: int, device: torch.device, repeat: int):
    """One attention layer's forward on ``[B, T, C]`` tokens: timm's fused full attention vs
    AWD with the dense SDPA mask and with the flex ``BlockMask``. The per-batch mask is shared by
    every block, so its construction is timed apart."""
    from winft_lightning import models

    cfg = {k: v for k, v in net.items() if k != "depth"}
    nets = {
        "full_fused": models.build_vit(**cfg, depth=1),
        "awd_dense": models.build_vit(**cfg, depth=1, attn="awd"),
        "awd_sparse": models.build_vit(**cfg, depth=1, attn="awd", sparse=True),
    }
    tokens = 1 + _grid(net)[0] * _grid(net)[1]
    x = torch.randn(batch, tokens, net["embed_dim"], device=device)
    windows = masks["windows"].to(device)
    row: dict = {"tokens": tokens, "batch": batch}

    def layer_fn(vit) -> Callable[[], None]:
        layer = vit.to(device).eval().blocks[0].attn

        def run() -> None:
            with _autocast(device):
                layer(x)

        return run

    with torch.inference_mode(), contextlib.ExitStack() as stack:
        for name in ("awd_dense", "awd_sparse"):
            vit = nets[name].to(device)
            row[f"mask_build_{name[4:]}_s"] = timeit(
                lambda vit=vit: models.set_batch(vit, windows=windows), repeat
            )
            ctx = stack.enter_context(models.batch_context(vit, windows=windows))
            if ctx.block_mask is not None:
                row["block_mask_sparsity_pct"] = round(float(ctx.block_mask.sparsity()), 2)
        times = timeit_interleaved({k: layer_fn(v) for k, v in nets.items()}, repeat)
    row.update({f"{k}_s": t for k, t in times.items()})
    row["speedup_dense"] = row["full_fused_s"] / row["awd_dense_s"]
    row["speedup_sparse"] = row["full_fused_s"] / row["awd_sparse_s"]
    row["ratio"] = max(row["speedup_dense"], row["speedup_sparse"])
    row["ratio_is"] = "full_fused_s / min(awd_dense_s, awd_sparse_s)"
    row["target"] = "AWD attention >= 2x faster than full attention (GPU, B/16 384, alpha 0.1)"
    row["holds"] = row["ratio"] >= 2.0
    print(
        f"train: attention layer full {1e3 * row['full_fused_s']:.1f} ms, AWD dense "
        f"{1e3 * row['awd_dense_s']:.1f} ms, sparse {1e3 * row['awd_sparse_s']:.1f} ms",
        flush=True,
    )
    return row


def _cpu_sparse(variant: str, device: torch.device) -> bool:
    """True where the variant's training step cannot run (flex has no CPU backward)."""
    return device.type == "cpu" and bool(VARIANTS[variant][1].get("sparse"))


def _variant_times(net: dict, data: dict, device: torch.device, repeat: int) -> dict:
    """Train-step and forward-only seconds of every variant, interleaved; ratios to ViT."""
    modules = {v: build_module(v, net, device) for v in VARIANTS}
    forward = timeit_interleaved(
        {v: forward_only(m, data, device) for v, m in modules.items()}, repeat
    )
    train = timeit_interleaved(
        {v: train_step(m, data, device) for v, m in modules.items() if not _cpu_sparse(v, device)},
        repeat,
    )
    steps = {}
    for v in VARIANTS:
        step = train.get(v)
        steps[v] = {
            "train_step_s": step,
            **({"train_step_null_reason": NO_CPU_BACKWARD} if step is None else {}),
            "forward_s": forward[v],
            "train_ratio_to_vit": None if step is None else step / train["vit"],
            "forward_ratio_to_vit": forward[v] / forward["vit"],
        }
        print(
            f"train: {v}: step {'-' if step is None else f'{1e3 * step:.0f} ms'}, "
            f"forward {1e3 * forward[v]:.0f} ms",
            flush=True,
        )
    return steps


def _step_targets(steps: dict) -> dict:
    """Each target on the best measured train-step ratio of its variants, plus every ratio."""
    out = {}
    for name, (variants, limit) in STEP_TARGETS.items():
        ratios = {v: steps[v]["train_ratio_to_vit"] for v in variants}
        measured = {v: r for v, r in ratios.items() if r is not None}
        best = min(measured, key=measured.get)
        out[name] = {
            "ratio": measured[best],
            "ratio_is": f"{best} train step / vit train step",
            "ratios": ratios,
            "target": f"train step <= {limit}x ViT step (GPU, B/16 384, alpha 0.1)",
            "holds": measured[best] <= limit,
            "holds_per_variant": {v: r <= limit for v, r in measured.items()},
        }
    return out


def train_section(device: torch.device, opts: argparse.Namespace) -> dict:
    """Training step per module / ViT step at B/16 384 (N = 576), and one attention layer."""
    net = {**B16_384, **WIDTHS[device.type]}
    batch = opts.train_batch or TRAIN_BATCH[device.type]
    repeat = opts.repeat
    masks, window_info = local_masks(batch, _grid(net))
    data = synthetic_batch(batch, net, masks, device)
    print(f"train: local windows {window_info}", flush=True)
    with flex_kernel(device) as kernel:
        attention = _attention_layer(net, masks, batch, device, 2 * repeat)
        steps = _variant_times(net, data, device, repeat)
    return {
        "net": net,
        "batch": batch,
        "precision": "bf16 autocast" if device.type == "cuda" else "float32",
        "optimizer": {"name": "SGD", **SGD},
        "repeat": repeat,
        "flex": kernel,
        "windows": window_info,
        "attention_layer": attention,
        "steps": steps,
        "targets": _step_targets(steps),
    }


# --- overhead ---------------------------------------------------------------------------


def fake_batches(count: int, batch: int, net: dict) -> torch.utils.data.DataLoader:
    """``count`` in-memory CPU batches ``{"image" [B, 3, S, S], "label" [B]}`` as a DataLoader
    without auto-batching (a bare list would be read by Lightning as a list of loaders)."""
    data = [synthetic_batch(batch, net, None, torch.device("cpu")) for _ in range(count)]
    return torch.utils.data.DataLoader(data, batch_size=None, shuffle=False)


def _batch_size(batches: torch.utils.data.DataLoader) -> int:
    """Images per batch of a :func:`fake_batches` loader."""
    return len(batches.dataset[0]["label"])


def plain_loop(
    net: dict, batches: torch.utils.data.DataLoader, device: torch.device, warmup: int
) -> float:
    """images/s of a plain timm + torch SGD loop over ``batches`` after ``warmup`` steps."""
    import timm

    cfg = dict(net)
    torch.manual_seed(0)
    model = timm.create_model(cfg.pop("model_name"), pretrained=False, **cfg).to(device).train()
    opt = torch.optim.SGD(model.parameters(), **SGD)
    start = 0.0
    for i, b in enumerate(batches):
        if i == warmup:
            _sync()
            start = time.perf_counter()
        images = b["image"].to(device, non_blocking=True)
        labels = b["label"].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with _autocast(device):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
    _sync()
    return (len(batches) - warmup) * _batch_size(batches) / (time.perf_counter() - start)


def _step_clock(warmup: int, last: int):
    """Lightning callback: wall clock from the start of batch ``warmup`` to the end of ``last``."""
    import lightning as L

    class StepClock(L.Callback):
        start = end = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == warmup:
                _sync()
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == last:
                _sync()
                self.end = time.perf_counter()

    return StepClock()


def lightning_loop(
    net: dict, batches: torch.utils.data.DataLoader, device: torch.device, warmup: int
) -> float:
    """images/s of ``ViTModule`` in a real Trainer (no logger, checkpoints, progress bar) over
    ``batches`` (one epoch) after ``warmup`` steps."""
    import lightning as L

    from winft_lightning.modules import ViTModule

    torch.manual_seed(0)
    module = ViTModule(net=net, optimizer=functools.partial(torch.optim.SGD, **SGD))
    clock = _step_clock(warmup, len(batches) - 1)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=len(batches),
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[clock],
    )
    trainer.fit(module, train_dataloaders=batches)
    return (len(batches) - warmup) * _batch_size(batches) / (clock.end - clock.start)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info lines and warnings (few workers, log interval, ...)."""
    import lightning.pytorch as pl  # its import sets the logger's level: import first

    logger = logging.getLogger(pl.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def overhead_section(device: torch.device, opts: argparse.Namespace) -> dict:
    """ViTModule + Trainer vs plain timm loop, same model, batches and SGD; best of rounds."""
    net, batch = OVERHEAD[device.type]
    warmup, steps, rounds = (2, 6, 2) if opts.quick else (4, 20, 3)
    batches = fake_batches(warmup + steps, batch, net)
    plain, lightning = [], []
    with _quiet_lightning():
        for _ in range(rounds):
            plain.append(plain_loop(net, batches, device, warmup))
            lightning.append(lightning_loop(net, batches, device, warmup))
    ratio = max(lightning) / max(plain)
    print(
        f"overhead: Trainer {max(lightning):.0f} img/s vs plain {max(plain):.0f} img/s "
        f"(ratio {ratio:.3f})",
        flush=True,
    )
    return {
        "net": net,
        "batch": batch,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "rounds": rounds,
        "data": "the same in-memory DataLoader of dict batches (no workers) for both loops",
        "lightning_images_per_s": max(lightning),
        "plain_images_per_s": max(plain),
        "lightning_images_per_s_rounds": lightning,
        "plain_images_per_s_rounds": plain,
        "ratio": ratio,
        "ratio_is": "lightning / plain images/s (best round each)",
        "target": "ratio >= 0.95",
        "holds": ratio >= 0.95,
    }


# --- data -------------------------------------------------------------------------------


def _random_teacher(path: Path) -> Path:
    """A randomly initialised fmnist-sized ViTModule saved as a Lightning checkpoint."""
    import lightning as L

    from winft_lightning.modules import ViTModule

    torch.manual_seed(0)
    module = ViTModule(net=FMNIST_NET)
    trainer = L.Trainer(
        max_epochs=0,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def digits_mask_set(tmp: Path, device: torch.device) -> tuple[Path, dict]:
    """Digits shards (``prepare_shards``) analysed at alpha 0.1 by a random teacher
    (``analyze_shards``) under ``tmp``. Returns (mask set root, timings)."""
    from omegaconf import OmegaConf

    from winft_lightning.analyze import analyze_shards
    from winft_lightning.prepare import prepare_shards

    cfg = OmegaConf.load(DIGITS_YAML)
    cfg.source.limit = {"train": None, "val": 128, "test": 128}  # the loader reads train only
    start = time.perf_counter()
    prepare_shards(cfg.source, tmp / "shards", progress=False)
    prepared = time.perf_counter()
    analyze_shards(
        teacher=_random_teacher(tmp / "teacher.ckpt"),
        shards=tmp / "shards",
        out_dir=tmp / "masks",
        alphas=[ALPHA],
        mean=list(cfg.mean),
        std=list(cfg.std),
        device=device.type,
        progress=False,
    )
    done = time.perf_counter()
    return tmp / "masks", {"prepare_s": prepared - start, "analyze_s": done - prepared}


def loader_rate(loader, batches: int, warmup: int) -> tuple[float, float]:
    """(images/s over ``batches`` batches after ``warmup``, seconds to the first batch)."""
    start = time.perf_counter()
    first = timed_from = 0.0
    images = 0
    for i, b in enumerate(loader.with_epoch(warmup + batches)):
        if i == 0:
            first = time.perf_counter() - start
        if i == warmup - 1:
            timed_from = time.perf_counter()
        elif i >= warmup:
            images += b["image"].shape[0]
    return images / (time.perf_counter() - timed_from), first


def data_section(device: torch.device, opts: argparse.Namespace) -> dict:
    """Shard loader (decode + hflip + mask decode, configured workers) vs training step rate."""
    from omegaconf import OmegaConf

    from winft_lightning.data.datamodule import ShardDataModule

    fmnist = OmegaConf.load(DIGITS_YAML.with_name("fashion_mnist.yaml"))
    batch, workers = int(fmnist.batch_size), int(fmnist.num_workers)
    warmup, batches = (2, 8) if opts.quick else (3, 30)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        with _quiet_lightning():
            root, build = digits_mask_set(Path(tmp), device)
        dm = ShardDataModule(
            root=root,
            batch_size=batch,
            num_workers=workers,
            img_size=FMNIST_NET["img_size"],
            hflip=True,
            alpha=ALPHA,
            use_masks=True,
            shuffle_buffer=500,
        )
        dm.setup("fit")
        rate, first = loader_rate(dm.train_dataloader(), batches, warmup)
        sample = next(iter(dm.train_dataloader().with_epoch(1)))
        train_count = dm.counts["train"]
    data = {k: sample[k].to(device) for k in ("image", "label", "windows", "dip_order")}
    modules = {v: build_module(v, FMNIST_NET, device) for v in ("vit", "awd_dense")}
    times = timeit_interleaved(
        {v: train_step(m, data, device) for v, m in modules.items()}, opts.repeat
    )
    step = {v: batch / t for v, t in times.items()}
    ratio = rate / max(step.values())
    print(
        f"data: loader {rate:.0f} img/s ({workers} workers) vs step {step} img/s "
        f"(ratio {ratio:.2f})",
        flush=True,
    )
    return {
        "source": "digits (sklearn 8x8, PNG) -> prepare_shards -> analyze_shards",
        "masks": f"AWD windows (alpha {ALPHA}) + DIP order from a random fmnist-sized teacher",
        "train_images": train_count,
        "img_size": FMNIST_NET["img_size"],
        "net": FMNIST_NET,
        "batch": batch,
        "num_workers": workers,
        "augment": "hflip (moves windows and DIP order with the image)",
        **build,
        "warmup_batches": warmup,
        "timed_batches": batches,
        "loader_first_batch_s": first,
        "loader_images_per_s": rate,
        "step_images_per_s": step,
        "ratio": ratio,
        "ratio_is": "loader images/s / fastest training step images/s",
        "target": "loader images/s >= training step images/s at the same batch",
        "holds": ratio >= 1.0,
        "note": "loader and step are timed apart; in a run they share the machine's cores",
    }


# --- memory -----------------------------------------------------------------------------


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
    net = {**B16_384, **WIDTHS[device.type]}
    batch = opts.train_batch or TRAIN_BATCH[device.type]
    masks, window_info = local_masks(batch, _grid(net))
    variants = [v for v in VARIANTS if not _cpu_sparse(v, device)]
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
    }


SECTIONS = {
    "analysis": analysis_section,
    "train": train_section,
    "overhead": overhead_section,
    "data": data_section,
    "memory": memory_section,
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--out", default=None)
    parser.add_argument("--batch", type=int, default=2, help="analysis batch")
    parser.add_argument("--train-batch", type=int, default=None, help="train/memory batch")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps (smoke)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = min(args.repeat, 2)
    device = torch.device(args.device)
    result = {"machine": machine(), "device": str(device), "quick": args.quick}
    for name in args.sections.split(","):
        if name not in SECTIONS:
            sys.exit(f"unknown section {name!r}; choose from {sorted(SECTIONS)}")
        start = time.perf_counter()
        result[name] = SECTIONS[name](device, args)
        result[name]["section_seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.out or f"outputs/bench/bench_{device.type}_{time.strftime('%Y-%m-%d')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
