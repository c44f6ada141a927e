"""on_nonfinite=skip under trainer=ddp_sim: one rank's non-finite loss skips the step on every
rank (a collective decision, a zero-gradient loss, no optimizer step), so no rank hangs.

The two-process run is this file run as a script, in its own process group with a time-out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from helpers import REPO, compose_config, tiny_module

BATCHES, BATCH = 6, 4
POISON = {(1, 1), (0, 4)}  # (rank, batch index): that rank's images are set to NaN there


def test_null_loss_gradient_is_exactly_zero_with_a_nan_and_an_inf_weight():
    model = tiny_module(on_nonfinite="skip")
    with torch.no_grad():
        model.net.head.weight[0, 0] = float("nan")
        model.net.head.weight[0, 1] = float("inf")
    model._null_loss().backward()
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(p.grad is not None for p in params)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params)


class RankImages(Dataset):
    """Random images, different on each rank (seeded by rank and index)."""

    def __len__(self) -> int:
        return BATCHES * BATCH

    def __getitem__(self, i: int) -> dict:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        g = torch.Generator().manual_seed(1000 * rank + i)
        return {"image": torch.randn(3, 16, 16, generator=g), "label": i % 10}


class PoisonAndRecord(L.Callback):
    """NaN images at ``poison`` (rank, batch index); per batch, whether this rank's weights changed; at the end, the
    rank's weights and record under ``out``."""

    def __init__(self, out: str, poison: set[tuple[int, int]] = POISON):
        self.out = Path(out)
        self.poison = poison
        self.changed: dict[int, bool] = {}

    def _flat(self, module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.global_rank, batch_idx) in self.poison:
            batch["image"].fill_(float("nan"))
        self.before = self._flat(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.changed[batch_idx] = not torch.equal(self.before, self._flat(pl_module))

    def on_train_end(self, trainer, pl_module):
        rank = trainer.global_rank
        torch.save(pl_module.state_dict(), self.out / f"rank{rank}.pt")
        adam = trainer.optimizers[0].state
        record = {
            "changed": self.changed,
            "skipped_batches": pl_module.skipped_batches,
            "global_step": trainer.global_step,
            "adam_steps": sorted({int(s["step"]) for s in adam.values()}),
            "world_size": trainer.world_size,
        }
        (self.out / f"rank{rank}.json").write_text(json.dumps(record))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed+scaler"])
def test_skip_under_each_precision_plugin(tmp_path, precision):
    """One process: the skipped batch moves no weight and takes no optimizer step, also through
    AMP's GradScaler (unscale, scaler.step, update run only on steps that are taken)."""
    from lightning.pytorch.plugins import MixedPrecision

    if precision == "16-mixed+scaler":  # fp16 AMP with a GradScaler, on CPU
        kw = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}
    else:
        kw = {"precision": precision}
    record = PoisonAndRecord(str(tmp_path), poison={(0, 2)})
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, callbacks=[record], **kw,
    )  # fmt: skip
    model = tiny_module(on_nonfinite="skip")
    trainer.fit(model, DataLoader(RankImages(), batch_size=BATCH))
    rec = json.loads((tmp_path / "rank0.json").read_text())
    assert model.skipped_batches == 1 and rec["global_step"] == BATCHES
    moved = [int(b) for b, m in rec["changed"].items() if m]
    assert len(rec["changed"]) == BATCHES and 2 not in moved
    assert rec["adam_steps"] == [len(moved)]  # an optimizer step exactly where weights moved
    if precision != "16-mixed+scaler":  # (the scaler itself skips its first overflowing steps)
        assert moved == [b for b in range(BATCHES) if b != 2]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def train_under_ddp_sim(out: Path) -> None:
    """Fit a tiny ViT with on_nonfinite=skip under the composed trainer=ddp_sim config."""
    from hydra.utils import instantiate

    cfg = compose_config(["trainer=ddp_sim"], out)
    assert cfg.trainer.devices == 2 and cfg.trainer.strategy.process_group_backend == "gloo"
    L.seed_everything(0)
    trainer = instantiate(
        cfg.trainer, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, limit_val_batches=0, callbacks=[PoisonAndRecord(str(out))],
    )  # fmt: skip
    loader = DataLoader(RankImages(), batch_size=BATCH)
    trainer.fit(tiny_module(on_nonfinite="skip"), train_dataloaders=loader)


@pytest.mark.slow
def test_ddp_sim_one_rank_non_finite_skips_the_step_on_every_rank(tmp_path):
    # this file as a script: tests/ on its path for helpers.py, as pytest puts it
    path = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, __file__, str(tmp_path)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": path},
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the spawned ranks with it
        out, err = proc.communicate()
        pytest.fail(f"2-rank run hung (killed after 240 s)\n{out[-2000:]}\n{err[-3000:]}")
    assert proc.returncode == 0, f"{out[-2000:]}\n{err[-4000:]}"
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    skipped = sorted(b for _, b in POISON)
    for rec in records:
        assert rec["world_size"] == 2
        assert rec["global_step"] == BATCHES  # both ranks went through every step
        assert rec["skipped_batches"] == len(skipped)
        # the weights stay put exactly on the poisoned batches (either rank's), on both ranks
        assert sorted(int(b) for b, moved in rec["changed"].items() if not moved) == skipped
        assert len(rec["changed"]) == BATCHES
        assert rec["adam_steps"] == [BATCHES - len(skipped)]  # no optimizer step when skipped
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert w0.keys() == w1.keys() and w0
    for name in w0:
        assert torch.isfinite(w0[name]).all(), name
        assert torch.equal(w0[name], w1[name]), name  # the ranks' weights are identical


if __name__ == "__main__":
    train_under_ddp_sim(Path(sys.argv[1]))
