"""``overhead`` section: ``ViTModule`` in a real Trainer vs a plain timm + torch loop (same
model, batches and SGD), images/s, best of rounds."""

from __future__ import annotations

import argparse
import functools
import time

import torch
import torch.nn.functional as F

from bench.benchlib import OVERHEAD, SGD, _autocast, _quiet_lightning, _sync, synthetic_batch


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

    from winft_lightning.lit.modules import ViTModule

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
