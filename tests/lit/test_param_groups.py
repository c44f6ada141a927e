"""model.param_groups: the optimizer's parameters split by name (lit.optim.param_groups), held to
a hand partition, one real optimizer step, and the teacher's store key."""

from __future__ import annotations

import fnmatch

import pytest
import torch

from helpers import tiny_module
from winft_lightning.lit.optim import param_groups

GROUPS = [
    {"match": "pos_embed", "lr_scale": 0.0, "weight_decay": 0.0},
    {"match": ["blocks.*.attn.qkv.*"], "lr_scale": 0.1},
]


def test_groups_partition_the_parameters_by_name():
    module = tiny_module(param_groups=GROUPS)
    names = [n for n, p in module.net.named_parameters() if p.requires_grad]
    got = param_groups(module.net.named_parameters(), GROUPS, lr=0.002, weight_decay=0.05)
    by_id = {id(p): n for n, p in module.net.named_parameters()}
    members = [[by_id[id(p)] for p in g["params"]] for g in got]
    # by hand: the position embedding, the 2 blocks' qkv weight and bias, everything else
    assert members[0] == ["pos_embed"]
    assert sorted(members[1]) == sorted(
        f"blocks.{i}.attn.qkv.{w}" for i in range(2) for w in ("weight", "bias")
    )
    assert sorted(members[2]) == sorted(set(names) - set(members[0]) - set(members[1]))
    assert [g["lr"] for g in got] == [0.0, pytest.approx(0.0002), 0.002]
    assert [g.get("weight_decay") for g in got] == [0.0, 0.05, None]  # the rest: the optimizer's
    assert sum(len(m) for m in members) == len(names)
    # null values (as a YAML `lr_scale: null` gives them) are the optimizer's own
    nulls = [{"match": "pos_embed", "lr_scale": None, "weight_decay": None}]
    (pe, _) = param_groups(module.net.named_parameters(), nulls, lr=0.002, weight_decay=0.05)
    assert pe["lr"] == 0.002 and pe["weight_decay"] == 0.05
    # none given: one group of every parameter, as module.parameters()
    (one,) = param_groups(module.net.named_parameters(), None, lr=0.002)
    assert len(one["params"]) == len(names)


def test_patterns_match_the_full_name_with_fnmatch():
    module = tiny_module()
    got = param_groups(module.named_parameters(), [{"match": "net.pos_embed"}], lr=1.0)
    assert len(got[0]["params"]) == 1  # the whole name: a pattern is not a substring
    with pytest.raises(ValueError, match="matches no"):
        param_groups(module.named_parameters(), [{"match": "pos_embed"}], lr=1.0)
    assert fnmatch.fnmatchcase("blocks.0.attn.qkv.weight", "blocks.*.attn.qkv.*")


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([{"match": "nothing_is_called_this"}], r"param_groups\[0\]: match=.*matches no"),
        (
            [{"match": "*pos_embed"}, {"match": "*pos*"}],
            r"param_groups\[1\] and .*\[0\] both match",
        ),
        ([{"match": "*pos_embed", "lr": 0.1}], r"param_groups\[0\]: keys must be"),
        ([{"lr_scale": 0.1}], r"param_groups\[0\]: keys must be"),
    ],
)
def test_bad_groups_are_refused_naming_the_group(groups, message):
    with pytest.raises(ValueError, match=message):
        param_groups(tiny_module().net.named_parameters(), groups, lr=1.0)


def test_one_real_step_follows_each_groups_lr():
    """AdamW through configure_optimizers: lr_scale 0 leaves the position embedding as it was,
    the qkv weights move about a tenth as far as the other weights (Adam's first step is lr
    per coordinate)."""
    torch.manual_seed(0)
    module = tiny_module(param_groups=GROUPS)
    opt = module.configure_optimizers()["optimizer"]
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    logits = module.net(torch.randn(4, 3, 16, 16))
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    opt.step()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in module.named_parameters()}
    assert moved["net.pos_embed"] == 0.0  # configure_optimizers matches timm's names
    qkv, other = moved["net.blocks.0.attn.qkv.weight"], moved["net.blocks.0.mlp.fc1.weight"]
    assert other == pytest.approx(1e-3, rel=0.05) and qkv == pytest.approx(1e-4, rel=0.05)
    assert module.hparams.param_groups == GROUPS  # kept for load_from_checkpoint


def test_the_teachers_param_groups_enter_its_store_key_only_when_given(make_cfg):
    from winft_lightning.stages.cache import teacher_model

    plain = teacher_model(make_cfg())
    assert "param_groups" not in plain  # a default teacher's key is as before the option
    given = teacher_model(make_cfg("teacher.param_groups=[{match: pos_embed, lr_scale: 0.0}]"))
    assert given["param_groups"] == [{"match": "pos_embed", "lr_scale": 0.0}]
    assert {k: v for k, v in given.items() if k != "param_groups"} == plain


@pytest.mark.parametrize(
    "override",
    [
        "teacher.param_groups=[{match: pos_embed, lr: 0.1}]",
        "+model.param_groups=[{match: pos_embed, lr_scale: -1}]",
        "teacher.param_groups=pos_embed",
    ],
)
def test_bad_groups_are_refused_before_any_work(make_cfg, override):
    from winft_lightning.stages.validate import ConfigError, validate_config

    option = override.lstrip("+").split("=")[0]
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        validate_config(make_cfg(override))
