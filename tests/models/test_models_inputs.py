"""Per-batch inputs are arguments: no module keeps anything of a call, and calls commute."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import MODEL_KW
from winft_lightning.core.interactions import awd_windows, dip_keep, dip_order
from winft_lightning.lit import modules as M
from winft_lightning.models import build_vit, net_inputs

KW = MODEL_KW
CASES = [
    ("full", {}),
    ("full", {"dip": "key_mask"}),
    ("full", {"dip": "multiply"}),
    ("awd", {}),
    ("awd", {"dip": "multiply"}),
    ("awd", {"sparse": True}),
    ("winft", {}),
    ("winft", {"winft_mode": "neg_inf", "dip": "multiply"}),
]


def _batch(seed: int, b: int = 3):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(b, 16, 16, generator=g)
    x = torch.randn(b, 3, 16, 16, generator=g)
    return x, awd_windows(u, 0.2, (4, 4)), dip_keep(dip_order(u), 0.25), dip_order(u)


def _args(attn: str, kw: dict, batch) -> dict:
    _, win, keep, _ = batch
    return {
        "windows": win if attn == "awd" else None,
        "keep": keep if kw.get("dip", "none") != "none" else None,
        "collect_winft": attn == "winft",
    }


def _values(obj, path: str, out: dict, depth: int = 0) -> None:
    """Every tensor-like value reachable from ``obj`` through containers and dataclasses."""
    if isinstance(obj, torch.Tensor) or type(obj).__name__ in ("BlockMask", "NetInputs"):
        out[path] = obj
    elif depth > 3:
        return
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _values(v, f"{path}[{k!r}]", out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _values(v, f"{path}[{i}]", out, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _values(getattr(obj, f.name), f"{path}.{f.name}", out, depth + 1)


def _state(root: torch.nn.Module) -> dict[str, int]:
    """path -> id of every tensor held by any module of ``root`` (parameters, buffers and plain
    attributes; submodules are walked by ``named_modules``)."""
    found: dict = {}
    for name, m in root.named_modules():
        for key, value in vars(m).items():
            if key != "_modules":
                _values(value, f"{name}.{key}", found)
    return {k: id(v) for k, v in found.items()}


def _same(a, b) -> bool:
    if a is None or b is None:  # WinftOutput.bce without w_gt
        return a is b
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("attn", "kw"), CASES)
def test_forward_keeps_no_state_and_calls_commute(attn, kw):
    torch.manual_seed(0)
    net = build_vit(attn=attn, **KW, **kw).eval()
    one, two = _batch(1), _batch(2, b=2)
    before = _state(net)
    with torch.no_grad():  # the sparse path has no CPU backward
        a1 = net(one[0], **_args(attn, kw, one))
        b1 = net(two[0], **_args(attn, kw, two))
        inputs_one, inputs_two = (net_inputs(net, **_args(attn, kw, b)) for b in (one, two))
        b2 = net(two[0], inputs_two)  # built in one order, called in the other
        a2 = net(one[0], inputs_one)
    assert _state(net) == before  # nothing of a call is left on any module
    assert _same(a1, a2) and _same(b1, b2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inputs_one.collect = False  # the per-call inputs cannot be edited on the way down


@pytest.mark.parametrize("mode", ["multiply", "neg_inf"])
def test_winft_module_steps_in_any_order(mode):
    """WinfT's w' goes from the network's return value to the loss: no stash between the
    forward, the E_O and the BCE, so two batches' steps do not depend on their order."""
    net = dict(model_name="vit_tiny_patch16_224", **KW)
    torch.manual_seed(0)
    module = M.WinfTModule(net=net, alpha=0.2, beta=0.25, winft_mode=mode).train()
    batches = []
    for seed in (1, 2):
        x, win, _, order = _batch(seed)
        batches.append({"image": x, "label": torch.tensor([0, 1, 4]), "windows": win,
                        "dip_order": order})  # fmt: skip
    before = _state(module)

    def step(batch):
        loss, logits, terms, out = module.model_step(batch, "train")
        eo = module.interactions(batch, out)
        grads = torch.autograd.grad(loss, list(module.net.parameters()))
        return [loss.detach(), logits.detach(), eo, terms["bce"].detach(), *grads]

    first = [step(b) for b in batches]
    second = [step(b) for b in reversed(batches)][::-1]
    assert _state(module) == before
    for a, b in zip(first, second, strict=True):
        assert _same(a, b)


def test_awd_dip_step_builds_its_keep_once_and_counts_the_fields():
    """AWD+DIP's forward and its E_O share one keep mask (run returns it); the E_O equals
    the count of the responsive fields that SPEC 4 defines."""
    from winft_lightning.core.interactions import interaction_count, responsive_field

    torch.manual_seed(0)
    module = M.AWDDIPViTModule(net=dict(model_name="vit_tiny_patch16_224", **KW), beta=0.25)
    x, win, keep, order = _batch(3)
    batch = {"image": x, "label": torch.tensor([0, 1, 4]), "windows": win, "dip_order": order}
    _, out = module.run(x, batch)
    assert torch.equal(out, keep)
    want = interaction_count(responsive_field(win, order, 0.25, (4, 4))).float()
    assert torch.equal(module.interactions(batch, out), want)
    assert torch.equal(module.interactions(batch), want)
