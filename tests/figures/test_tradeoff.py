"""The accuracy vs E_O trade-off plot (figures/tradeoff.py): one line per method family, control
arms named, each alpha / beta label beside its point and clear of the others."""

from __future__ import annotations

import numpy as np
from PIL import Image

from winft_lightning import figures


def test_tradeoff_figure(tmp_path):
    rows = [
        dict(module="ViTModule", alpha=None, beta=None, top1=81.2, eo=38416.0),
        dict(family="awd_vit", alpha=0.2, beta=0.0, top1=81.5, eo=15000.0),
        dict(module="AWDViTModule", alpha=0.1, beta=0.0, top1=81.9, eo=8866.0),
        dict(family="awd_vit", alpha=0.1, beta=0.0, top1=80.9, eo=8866.0),  # 2nd seed
        dict(module="AWDDIPViTModule", alpha=0.1, beta=0.2, top1=82.4, eo=7080.0),
        dict(method="my_rule", alpha=0.3, beta=0.0, top1=79.0, eo=9000.0),  # not in the table
        dict(module="AWDViTModule", alpha=0.3, beta=0.0, top1=float("nan"), eo=2e4),  # skipped
        dict(family="winft", alpha=1.0, beta=0.0, top1="", eo=2e4),  # failed run: skipped
    ]
    fig = figures.tradeoff_figure(rows, log_x=True)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    # one line per family, labelled from the family table (families.py); a row of a rule the
    # table does not know keeps its own name
    assert set(lines) == {"ViT", "AWD-ViT", "AWD+DIP ViT", "my_rule"}
    np.testing.assert_array_equal(lines["AWD-ViT"].get_xdata(), [8866.0, 15000.0])  # sorted
    np.testing.assert_allclose(
        np.asarray(lines["AWD-ViT"].get_ydata(), float), [81.4, 81.5]
    )  # seed mean
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["α=0.1, β=0", "α=0.1, β=0.2", "α=0.2, β=0", "α=0.3, β=0"]
    fig.canvas.draw()
    path = figures.save(fig, tmp_path / "sub" / "tradeoff.png")
    with Image.open(path) as im:
        im.verify()


def test_tradeoff_legend_names_control_arms():
    rows = [
        dict(family="awd_vit", control="", alpha=0.1, beta=0.0, top1=64.0, eo=2800.0),
        dict(family="awd_vit:random", control="random", alpha=0.1, beta=0.0, top1=61.6, eo=2800.0),
        dict(family="awd_dip_vit:random", alpha=0.1, beta=0.2, top1=60.1, eo=2300.0),
        dict(family="awd_vit", control="centred", alpha=0.1, beta=0.0, top1=62.0, eo=2800.0),
        dict(family="awd_dip_vit", control="other", alpha=0.1, beta=0.2, top1=62.0, eo=2300.0),
    ]
    (ax,) = figures.tradeoff_figure(rows).axes
    assert {c.get_label() for c in ax.containers} == {
        "AWD-ViT", "AWD-ViT (random windows)",
        "AWD+DIP ViT (random windows, random patches dropped)", "AWD-ViT (centred windows)",
        "AWD+DIP ViT (other control)",
    }  # fmt: skip


def test_tradeoff_labels_of_arms_at_one_point_do_not_overlap():
    """A study's arms share alpha and beta and sit at nearly one E_O and accuracy (AWD and its
    controls): each label is placed clear of the others, not drawn over them."""
    rows = [
        dict(family="awd_vit", alpha=0.1, beta=0.0, top1=69.0, eo=1495.0),
        dict(family="awd_vit:centred", alpha=0.1, beta=0.0, top1=69.2, eo=1497.0),
        dict(family="awd_vit:random", alpha=0.1, beta=0.0, top1=68.6, eo=1490.0),
        dict(family="winft", alpha=0.1, beta=0.0, top1=53.7, eo=1890.0),
        dict(family="winft", alpha=0.1, beta=0.2, top1=53.6, eo=1810.0),
        dict(family="vit", alpha=1.0, beta=0.0, top1=59.7, eo=4096.0),
    ]
    fig = figures.tradeoff_figure(rows)
    (ax,) = fig.axes
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.texts]
    assert len(boxes) == 6
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
