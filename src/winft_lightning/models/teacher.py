"""Load the teacher ViT whose attention is analyzed.

``load_teacher(path)`` accepts (a) a Lightning checkpoint of our modules
(``hyper_parameters.net`` = timm ViT kwargs, state-dict keys ``net.<timm key>``), or (b) a plain
weights file (timm/torch state dict, ``.safetensors``, or a Google ``.npz``; the format read
from the content) with an explicit model config, loaded through timm's own pretrained path
(:func:`~winft_lightning.models.weights.create_with_weights`, so the position embedding is
resampled when ``img_size`` differs from the weights'). :func:`teacher_norm` is the one rule
for the normalisation of the teacher's analyzed view.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from winft_lightning.runtime.checkpoints import (
    UnreadableCheckpoint,
    UntrustedCheckpoint,
    checkpoint_file,
    checkpoint_format,
    net_weights,
    read_checkpoint,
)
from winft_lightning.runtime.hashing import file_sha256  # also imported from here

from .distance import DistanceAttention, check_attn_bias, set_distances
from .weights import create_with_weights

log = logging.getLogger(__name__)


class TeacherError(ValueError):
    """The teacher file is of the wrong kind, or does not fit the model config."""


@dataclass(frozen=True)
class TeacherInfo:
    """What a mask set records about its teacher (the manifest's ``teacher`` block)."""

    path: str
    sha256: str
    model_name: str
    img_size: int
    patch_size: int
    grid: tuple[int, int]
    num_prefix_tokens: int
    num_classes: int
    kind: str  # "lightning" | "timm"
    mean: tuple[float, ...] | None = None  # the training normalisation, when the file has it
    std: tuple[float, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        d["mean"] = list(self.mean) if self.mean else None
        d["std"] = list(self.std) if self.std else None
        return d


def teacher_norm(
    model: nn.Module,
    info: TeacherInfo,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[list[float], list[float]]:
    """Normalisation of the teacher's analyzed view: ``mean`` / ``std`` when given, else the one
    the teacher was trained with (its checkpoint's datamodule hyperparameters), else its timm
    pretrained config's, else 0.5."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if mean is None:
        mean = info.mean or cfg.get("mean") or (0.5, 0.5, 0.5)
    if std is None:
        std = info.std or cfg.get("std") or (0.5, 0.5, 0.5)
    return [float(m) for m in mean], [float(s) for s in std]


_VIT_ARGS = set(inspect.signature(VisionTransformer.__init__).parameters) - {"self"}


def timm_kwargs(net: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(model_name, kwargs)`` for ``timm.create_model`` from a ``net`` hparams dict: keys
    timm's VisionTransformer does not take (``attn``, ``alpha``, ``checkpoint``, ...) and
    ``None`` values (use the model's default) are dropped; ``attn_bias: distance`` (an
    architecture) becomes its ``attn_layer`` (:class:`.distance.DistanceAttention`)."""
    if not net.get("model_name"):
        raise TeacherError(f"net config {net} has no model_name")
    kw = {k: v for k, v in net.items() if k in _VIT_ARGS and v is not None}
    if check_attn_bias(net.get("attn_bias"), "net config attn_bias", TeacherError) == "distance":
        kw["attn_layer"] = DistanceAttention
    for k in ("img_size", "patch_size"):
        if isinstance(kw.get(k), list):
            kw[k] = tuple(kw[k])
    return str(net["model_name"]), kw


def plain_file_net(net: dict[str, Any]) -> dict[str, Any]:
    """The architecture a plain weights teacher file (no ``hyper_parameters.net``) is read
    with: the run's ``model.net`` (name, geometry, width), the head's class count left to the
    file; :func:`load_teacher` ignores it for a Lightning checkpoint, which carries its own."""
    return {k: v for k, v in net.items() if k not in ("num_classes", "checkpoint", "pretrained")}


def _torch_load(path: Path, trust_pickle: bool, option: str) -> Any:
    try:
        return read_checkpoint(path, trust_pickle=trust_pickle, option=option)
    except (UntrustedCheckpoint, UnreadableCheckpoint) as err:
        raise TeacherError(str(err)) from err
    except Exception as err:
        raise TeacherError(
            f"teacher file {path} is not a PyTorch checkpoint or weights file "
            f"({type(err).__name__}: {str(err)[:200]})"
        ) from err


def _info(
    model: nn.Module, path: Path, sha: str, name: str, kind: str, dm: dict | None = None
) -> TeacherInfo:
    pe = model.patch_embed
    dm = dm if isinstance(dm, dict) else {}
    mean, std = dm.get("mean"), dm.get("std")
    return TeacherInfo(
        path=str(path),
        sha256=sha,
        model_name=name,
        img_size=int(pe.img_size[0]),
        patch_size=int(pe.patch_size[0]),
        grid=(int(pe.grid_size[0]), int(pe.grid_size[1])),
        num_prefix_tokens=int(model.num_prefix_tokens),
        num_classes=int(model.num_classes),
        kind=kind,
        mean=tuple(float(m) for m in mean) if mean else None,
        std=tuple(float(s) for s in std) if std else None,
    )


def load_teacher(
    path: str | Path,
    *,
    model_name: str | None = None,
    device: str | torch.device = "cpu",
    trust_pickle: bool = False,
    trust_option: str = "trust_pickle",
    sha256: str | None = None,
    path_option: str = "teacher",
    **net: Any,
) -> tuple[nn.Module, TeacherInfo]:
    """``(model in eval mode, TeacherInfo)`` from a Lightning checkpoint of our modules, or a
    plain timm weights file given with ``model_name`` and its config (``img_size``,
    ``patch_size``, ``num_classes``, ``embed_dim``, ... as for ``timm.create_model``).
    A file that needs a full unpickle is refused unless ``trust_pickle`` (the error names
    the setting ``trust_option``). ``sha256``: the file's digest, from a caller that has
    checked and hashed the file already (the pipeline); without it the file is checked
    (:func:`~winft_lightning.runtime.checkpoints.checkpoint_file`, naming ``path_option``)
    and hashed here."""
    path = Path(path).expanduser()
    if sha256 is None:
        sha256 = file_sha256(checkpoint_file(path, path_option))
    try:
        fmt = checkpoint_format(path)
    except UnreadableCheckpoint as err:
        raise TeacherError(str(err)) from err
    obj = None if fmt == "npz" else _torch_load(path, trust_pickle, trust_option)
    hp = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    if isinstance(hp, dict) and isinstance(hp.get("net"), dict) and "state_dict" in obj:
        name, model = _lightning_net(path, obj, dict(hp["net"]))
        kind = "lightning"
    else:
        name, model = _plain_net(path, fmt, obj, model_name, net)
        kind = "timm"
    set_distances(model).eval().to(device)
    dm = obj.get("datamodule_hyper_parameters") if isinstance(obj, dict) else None
    return model, _info(model, path, sha256, name, kind, dm)


def _lightning_net(path: Path, obj: dict, net: dict[str, Any]) -> tuple[str, nn.Module]:
    """``(model_name, network)`` of a Lightning checkpoint ``obj`` of our modules: timm's ViT of
    its ``hyper_parameters.net`` config ``net`` with its ``net.*`` weights (strict)."""
    name, kw = timm_kwargs(net)
    model = timm.create_model(name, pretrained=False, **kw)
    state = net_weights(obj["state_dict"])
    if not state:
        raise TeacherError(f"checkpoint {path} has no 'net.*' weights in its state_dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise TeacherError(
            f"checkpoint {path}: its net.* weights do not fit {name}{kw}: {e}"
        ) from e
    return name, model


def _plain_net(
    path: Path, fmt: str, obj: Any, model_name: str | None, net: dict[str, Any]
) -> tuple[str, nn.Module]:
    """``(model_name, network)`` of a plain weights file (``obj`` as read, None for an ``npz``):
    timm's ``model_name`` with the config ``net``, through timm's pretrained path."""
    if fmt != "npz" and not isinstance(obj, dict):
        raise TeacherError(
            f"teacher file {path} is neither a Lightning checkpoint with "
            f"hyper_parameters.net nor a weights file (it holds a {type(obj).__name__})"
        )
    if isinstance(obj, dict) and "state_dict" in obj and not model_name:
        raise TeacherError(
            f"checkpoint {path} has no hyper_parameters.net; pass model_name=... and the "
            "net config to load it as plain weights"
        )
    if not model_name:
        raise TeacherError(
            f"{path} is a plain weights file: pass model_name=... (and img_size, "
            "patch_size, num_classes, ...) so timm can build the network"
        )
    name, kw = timm_kwargs({"model_name": model_name, **net})
    try:
        return name, create_with_weights(name, path, obj, **kw)
    except UnreadableCheckpoint as e:
        raise TeacherError(str(e)) from e
    except Exception as e:  # timm/safetensors raise several types
        raise TeacherError(f"weights file {path} does not fit {name}{kw}: {e}") from e


def save_untrained(model_cfg: Any, ckpt: str | Path) -> Path:
    """A randomly initialised teacher (``model_cfg``: a ``ViTModule`` config), saved as a
    Lightning checkpoint that :func:`load_teacher` reads like a trained one."""
    import lightning as L
    from hydra.utils import instantiate

    module = instantiate(model_cfg, _convert_="all")
    trainer = L.Trainer(
        max_epochs=0, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.strategy.connect(module)
    ckpt = Path(ckpt)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.with_name(f".{ckpt.name}.tmp")
    trainer.save_checkpoint(tmp)
    tmp.replace(ckpt)
    return ckpt
