"""torch.compile: one SGD training step per attention kind, fullgraph (no graph breaks).

The default test uses the aot_eager backend (dynamo + AOT autograd, the parts our layers must
survive) and checks the step against eager for every attention kind; the inductor variant
generates C++ kernels (~30 s on 2 CPU cores) for the one case that runs every kind of layer, and is
marked slow.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import MODEL_KW
from winft_lightning.core.interactions import awd_windows, dip_keep, dip_order, responsive_field
from winft_lightning.models import build_vit, net_inputs

KW = MODEL_KW
CASES = [("full", None), ("awd", None), ("awd", "multiply"), ("winft", None), ("winft", "multiply")]


def _batch():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2, 16, 16, generator=g)
    win = awd_windows(u, 0.1, (4, 4))
    order = dip_order(u)
    return torch.randn(2, 3, 16, 16, generator=g), torch.tensor([1, 3]), win, order


def _step(net, model, attn, dip):
    """One forward/backward/SGD step; ``net`` is the (compiled) module, ``model`` the eager one.
    Returns (loss, E_O or None)."""
    x, y, win, order = _batch()
    keep = dip_keep(order, 0.25) if dip else None
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w_gt = responsive_field(win, order, 0.25, (4, 4)) if attn == "winft" else None
    inputs = net_inputs(
        net, windows=win if attn == "awd" else None, keep=keep, w_gt=w_gt
    )  # built once, outside the compiled region; the network gets it as an argument
    out = net(x, inputs)
    eo = None
    if attn == "winft":  # the BCE each block takes against w_gt (WinfTModule's loss)
        loss = F.cross_entropy(out.logits, y) + out.bce
        eo = out.eo
    else:
        loss = F.cross_entropy(out, y)
    loss.backward()
    opt.step()
    return loss.detach(), eo


def _run(attn, dip, backend):
    torch.manual_seed(0)
    eager = build_vit(attn=attn, dip=dip, **KW)
    model = build_vit(attn=attn, dip=dip, **KW)
    model.load_state_dict(eager.state_dict())
    before = model.blocks[0].attn.qkv.weight.detach().clone()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    ref_loss, ref_eo = _step(eager, eager, attn, dip)
    loss, eo = _step(compiled, model, attn, dip)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    if eo is not None:
        assert torch.equal(eo, ref_eo)
    for (name, p), q in zip(eager.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4, msg=name)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, before)  # the step did update


@pytest.mark.parametrize(("attn", "dip"), CASES)
def test_compiled_training_step(attn, dip):
    _run(attn, dip, "aot_eager")


@pytest.mark.slow
def test_compiled_training_step_inductor():
    """WinfT with DIP's multiply: the one case that runs every layer kind (the window mask, the
    keep, the per-block W logits); aot_eager above holds each kind apart. Inductor's C++ build
    costs ~15-30 s a case on 2 cores, so one case stands for all."""
    _run("winft", "multiply", "inductor")
