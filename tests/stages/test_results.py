"""The results table prints only what was measured: throughput with the digits it needs,
top-5 only where 5 < the number of classes (stages/results.py, lit/modules.py's metrics)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import TINY_NET
from winft_lightning.lit.modules import ViTModule
from winft_lightning.stages.results import results_table, significant


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.4123, "0.412"), (3.0, "3.00"), (41.26, "41.3"), (258.4, "258"), (3082.4, "3,082"),
     (1354.0, "1,354"), (0.0, "0")],
)  # fmt: skip
def test_throughput_keeps_its_significant_digits(value, shown):
    assert significant(value) == shown


def _row(name, top5, images_per_s):
    return {"name": name, "top1": 50.0, "top5": top5, "eo": 16.0, "eo_ratio": 1.0,
            "images_per_s": images_per_s}  # fmt: skip


def test_a_slow_two_class_run_prints_no_top5_and_no_zero_throughput():
    _, md = results_table([_row("vit", math.nan, 0.31), _row("winft", math.nan, 0.27)])
    header, _, *body = md.splitlines()
    assert "top-5" not in header and "train img/s" in header
    assert body[0].endswith("| 0.310 |") and body[1].endswith("| 0.270 |")
    _, md = results_table([_row("vit", 91.5, 812.3), _row("winft", math.nan, 790.0)])
    header, _, first, second = md.splitlines()
    assert "top-5 %" in header and "| 91.50 |" in first and "| - |" in second


@pytest.mark.parametrize(("classes", "has_top5"), [(2, False), (5, False), (6, True)])
def test_top5_is_measured_only_above_five_classes(classes, has_top5):
    module = ViTModule(net=dict(TINY_NET, num_classes=classes))
    logits = torch.randn(8, classes)
    labels = torch.randint(classes, (8,))
    out = module.test_metrics(logits, labels)
    assert ("test/top5" in out) == has_top5
    assert out["test/top1"] == (logits.argmax(1) == labels).float().mean()
