"""The timm ViT variants a researcher brings (register tokens, no class token, a non-square image,
DeiT's distilled model): the analysis held to a hand capture and the naive SPEC 1-4 loops, and
one real training step of each of the four modules. Models outside the ViT family are refused
before anything is built."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from naive import hand_attention, naive_dip_order, naive_field, naive_u, naive_windows
from winft_lightning import analyze
from winft_lightning.lit.modules import MODULES
from winft_lightning.models import UnsupportedModel, build_vit
from winft_lightning.stages.validate import ConfigError, validate_config

BASE = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5)
# variant -> (build_vit arguments, prefix tokens, patch grid)
VARIANTS = {
    "registers": (dict(model_name="vit_tiny_patch16_224", reg_tokens=4), 5, (4, 4)),
    "no_class_token": (
        dict(model_name="vit_tiny_patch16_224", class_token=False, global_pool="avg"),
        0,
        (4, 4),
    ),
    "non_square": (dict(model_name="vit_tiny_patch16_224", img_size=(16, 12)), 1, (4, 3)),
    "distilled": (dict(model_name="deit_tiny_distilled_patch16_224"), 2, (4, 4)),
}
ALPHAS = (0.1, 0.5)


def variant_net(name: str) -> dict:
    return {**BASE, **VARIANTS[name][0]}


def images_for(name: str, b: int = 3, seed: int = 0) -> torch.Tensor:
    img = variant_net(name)["img_size"]
    h, w = (img, img) if isinstance(img, int) else img
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_analysis_of_each_variant_matches_the_naive_loops(variant):
    torch.manual_seed(0)
    model = build_vit(**variant_net(variant)).eval()
    _, prefix, grid = VARIANTS[variant]
    assert model.num_prefix_tokens == prefix
    images = images_for(variant)
    result = analyze(model, images, alphas=ALPHAS)
    n = grid[0] * grid[1]
    assert result.grid == grid and result.u.shape == (3, n, n)

    u = naive_u([a[:, :, prefix:, prefix:].double() for a in hand_attention(model, images)])
    torch.testing.assert_close(result.u.double(), u, rtol=1e-4, atol=1e-7)
    # ranks are taken on the analysis's own U (float32 ties would differ in float64)
    measured = result.u.double()
    for alpha in ALPHAS:
        assert torch.equal(result.windows[alpha], naive_windows(measured, alpha, grid))
    assert torch.equal(result.order, naive_dip_order(measured))
    for alpha in ALPHAS:
        field = naive_field(result.windows[alpha], result.order, 0.25, grid)
        assert torch.equal(result.field(alpha, 0.25), field)
    if variant == "distilled":  # the prediction is timm's: the mean of the two heads
        with torch.no_grad():
            feats = model.forward_features(images)
            both = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2
            torch.testing.assert_close(model(images), both)


def one_batch(variant: str) -> dict:
    """Images, labels and the masks a teacher of the same variant makes (alpha 0.1)."""
    torch.manual_seed(1)
    teacher = build_vit(**variant_net(variant)).eval()
    images = images_for(variant, b=4, seed=1)
    result = analyze(teacher, images, alphas=(0.1,))
    labels = torch.tensor([0, 1, 2, 3])
    return {"image": images, "label": labels, "windows": result.windows[0.1],
            "dip_order": result.order}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_module_takes_a_training_step_on_each_variant(variant, tmp_path):
    batch = one_batch(variant)
    options = {"vit": {}, "awd_vit": {"alpha": 0.1}, "awd_dip_vit": {"alpha": 0.1, "beta": 0.25},
               "winft": {"alpha": 0.1, "beta": 0.25}}  # fmt: skip
    assert set(options) == set(MODULES)
    opt = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    for family, cls in MODULES.items():
        torch.manual_seed(0)
        module = cls(net=variant_net(variant), optimizer=opt, **options[family])
        before = {k: v.clone() for k, v in module.net.state_dict().items()}
        trainer = L.Trainer(
            max_steps=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        loader = torch.utils.data.DataLoader([batch], batch_size=None)
        trainer.fit(module, loader)
        assert trainer.global_step == 1, family
        loss = trainer.callback_metrics["train/loss"]
        assert torch.isfinite(loss), (family, loss)
        after = module.net.state_dict()
        moved = [k for k in before if not torch.equal(before[k], after[k])]
        assert "blocks.0.attn.qkv.weight" in moved and "head.weight" in moved, (family, moved)
        if variant == "distilled":
            assert "head_dist.weight" in moved


@pytest.mark.parametrize(
    ("model_name", "module"),
    [("swin_tiny_patch4_window7_224", "swin_transformer"), ("resnet18", "resnet")],
)
def test_models_outside_the_vit_family_are_refused_before_any_work(make_cfg, model_name, module):
    with pytest.raises(UnsupportedModel, match=rf"{model_name} is a timm {module} model.*vit_"):
        build_vit(model_name)
    cfg = make_cfg(f"model.net.model_name={model_name}")
    with pytest.raises(ConfigError, match=rf"model.net.model_name={model_name} is a timm {module}"):
        validate_config(cfg)
    with pytest.raises(UnsupportedModel, match="vit_base_patch16_2244 is not a timm model"):
        build_vit("vit_base_patch16_2244")
