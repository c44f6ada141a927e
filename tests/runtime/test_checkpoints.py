"""Checkpoint files are read tensors-only: a pickle that would run code is refused, naming the
opt-in, and its code does not run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import tiny_vit
from winft_lightning.models.teacher import TeacherError, load_teacher
from winft_lightning.runtime.checkpoints import UntrustedCheckpoint, read_checkpoint


class Payload:
    """Unpickling it opens (creates) ``marker``: code from the file runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def malicious_teacher(tmp_path: Path) -> tuple[Path, Path]:
    model = tiny_vit()
    net = dict(model_name="vit_tiny_patch16_224", img_size=16, patch_size=4, num_classes=10,
               embed_dim=32, depth=2, num_heads=2)  # fmt: skip
    marker = tmp_path / "code_ran"
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"net": net, "note": Payload(marker)},
    }
    path = tmp_path / "teacher.ckpt"
    torch.save(ckpt, path)
    assert not marker.exists()
    return path, marker


def test_a_pickle_that_runs_code_is_refused_naming_the_opt_in(tmp_path):
    path, marker = malicious_teacher(tmp_path)
    with pytest.raises(UntrustedCheckpoint, match=r"set trust_pickle=true"):
        read_checkpoint(path)
    with pytest.raises(TeacherError, match=rf"{path}.*set teacher\.trust_pickle=true"):
        load_teacher(path, trust_option="teacher.trust_pickle")
    assert not marker.exists()


def test_the_opt_in_loads_it(tmp_path):
    path, marker = malicious_teacher(tmp_path)
    model, info = load_teacher(path, trust_pickle=True)
    assert marker.exists()  # the file's code ran: exactly what the opt-in allows
    assert info.grid == (4, 4) and model.num_classes == 10


def test_safetensors_and_plain_checkpoints_read(tmp_path):
    from safetensors.torch import save_file

    state = {"w": torch.arange(6.0).reshape(2, 3)}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.ckpt")
    assert torch.equal(read_checkpoint(tmp_path / "w.safetensors")["w"], state["w"])
    plain = read_checkpoint(tmp_path / "w.ckpt")
    assert plain["epoch"] == 3 and torch.equal(plain["state_dict"]["w"], state["w"])
