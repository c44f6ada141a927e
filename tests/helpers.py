"""Plain helpers of the tests, imported normally (``from helpers import ...``; pytest puts
``tests/`` on ``sys.path``); the fixtures live in conftest.py, and nothing imports conftest:
the project's Hydra configs composed as the CLI composes them, the CLI in a new process (forked, or a fresh interpreter), a bounded
wait on an event, the digits source, a real tiny timm ViT, a PNG decoder."""

from __future__ import annotations

import atexit
import io
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

import winft_lightning

REPO = Path(__file__).resolve().parents[1]  # the checkout: README.md, docs/, scripts/
CONF_DIR = Path(winft_lightning.__file__).parent / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# appended, like the size overrides, to the CLI runs of tests whose point is not the end-of-fit
# figures: drawing them is most of a debug=tiny run (5-10 s of CPU a run on 2 cores); the
# main-job tests (tests/jobs/test_main_job.py) keep them and check every file
NO_FIGURES = "callbacks.interaction_figures=null"


def compose_config(
    overrides: list[str], root: Path, config_name: str = "train", run_dir: Path | None = None
) -> DictConfig:
    """The composed config of ``python -m winft_lightning <overrides>`` with outputs under root."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            overrides=[f"paths.root_dir={root}", *overrides],
            return_hydra_config=True,
        )
    out = run_dir or root / "outputs" / "run"
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.runtime.cwd = str(root)
        cfg.hydra.job.name = "test"
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra  # as the app sees it
    return cfg


def cli(
    *args: str, module: str = "winft_lightning", timeout: float = 300, fresh: bool = False, **popen
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <args>`` in a new process (a real Hydra app, real processes).

    By default the process is a fork of this test process that runs the module as ``python -m``
    does (:func:`_forked_module`): it skips a second import of torch, Lightning and timm (about
    11 s of CPU a process on a 2-core host). ``fresh=True`` starts a new interpreter instead,
    for a test whose point is what a user's cold ``python -m`` does. ``cwd`` and ``env`` as in
    :func:`subprocess.run`."""
    env = popen.pop("env", None) or {
        **os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"
    }  # fmt: skip
    if not fresh:
        return _forked_module(module, list(args), timeout, env=env, **popen)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False, **popen,
    )  # fmt: skip


def _forked_module(
    module: str, args: list[str], timeout: float, env: dict[str, str], cwd: Path | str | None = None
) -> subprocess.CompletedProcess:
    """``python -m module args`` in a forked child: its own working directory, environment,
    argv, stdout and stderr (files read back here), Hydra state and exit handlers; the exit
    status as Python's own (a ``SystemExit`` code, 1 on an uncaught exception). Killed, and
    :class:`subprocess.TimeoutExpired` raised, after ``timeout`` seconds."""
    argv = [sys.executable, "-m", module, *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            _run_module_in_child(module, args, env, cwd, out.fileno(), err.fileno())
        end = time.monotonic() + timeout
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > end:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired(argv, timeout)
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        text = [f.read().decode(errors="replace") for f in (out, err)]
    return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(done[1]), *text)


def _run_module_in_child(
    module: str, args: list[str], env: dict[str, str], cwd, out: int, err: int
) -> None:
    code: object = 1
    try:
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        atexit._clear()  # the test process's exit handlers are not the child's
        if cwd is not None:
            os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        GlobalHydra.instance().clear()
        sys.argv = ["-m", *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()
        if not isinstance(code, int | None):
            print(code, file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)


def wait_for(
    predicate: Callable[[], object], *procs: subprocess.Popen, timeout: float = 60.0
) -> None:
    """Poll ``predicate`` until it holds; fail if ``timeout`` seconds pass first, or if one of
    ``procs`` (the processes that are to bring it about) exits before it holds."""
    end = time.monotonic() + timeout
    while not predicate():
        for proc in procs:
            assert proc.poll() is None, f"{proc.args!r} exited early with {proc.returncode}"
        assert time.monotonic() < end, f"not reached in {timeout} s"
        time.sleep(0.05)


DIGITS = {
    "name": "digits",
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "seed": 0,
    "limit": {"train": 200, "val": 40, "test": 60},
    "maxcount": 25,
}


def digits_source(**kw) -> dict:
    return {**DIGITS, **kw}


def tiny_vit(img_size: int = 16, patch_size: int = 4, seed: int = 0, **kw) -> torch.nn.Module:
    """A real timm ViT: depth 2, width 32, 2 heads."""
    torch.manual_seed(seed)
    args = dict(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=10,
    )
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


TINY_NET = dict(model_name="vit_tiny_patch16_224", img_size=16, patch_size=4, num_classes=10,
                embed_dim=32, depth=2, num_heads=2)  # fmt: skip
# the models' tests: ``build_vit(**MODEL_KW)`` (its default model name, 5 classes)
MODEL_KW = dict(img_size=16, patch_size=4, num_classes=5, embed_dim=32, depth=2, num_heads=2)


def tiny_module(**kw):
    """A ``ViTModule`` of ``TINY_NET`` with AdamW at 1e-3."""
    from winft_lightning.lit.modules import ViTModule

    opt = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
    return ViTModule(net=dict(TINY_NET), optimizer=opt, **kw)


def local_windows(b: int, grid: tuple[int, int], seed: int = 0, reach: int = 3) -> torch.Tensor:
    """[B, N, 4] boxes around each patch with random reach 0..reach-1 per side."""
    h, w = grid
    g = torch.Generator().manual_seed(seed)
    p = torch.arange(h * w)
    x, y = p % w, p // w
    r = torch.randint(0, reach, (b, h * w, 4), generator=g)
    box = (x - r[..., 0], y - r[..., 1], x + r[..., 2], y + r[..., 3])
    lo = torch.stack(box[:2], -1).clamp_min(0)
    hi = torch.stack(box[2:], -1).minimum(torch.tensor([w - 1, h - 1]))
    return torch.cat((lo, hi), -1)


def teacher_keys(make_cfg, tmp_path: Path, *overrides: str, without: tuple[str, ...] = ()):
    """``(key, key_before, shards)``: the teacher store key of a ``debug=tiny`` AWD config with
    ``overrides`` on a stub shard set, and the same config's key with the ``teacher.<without>``
    options deleted (the config as it was before they existed)."""
    from winft_lightning.stages.cache import teacher_key

    shards = tmp_path / "shards"
    shards.mkdir(exist_ok=True)
    (shards / "manifest.json").write_text('{"splits": {}, "format": 2}')
    cfg = make_cfg("experiment=fmnist_awd_vit", "debug=tiny", *overrides)
    key = teacher_key(cfg, shards)
    with open_dict(cfg):
        for name in without:
            del cfg.teacher[name]
    return key, teacher_key(cfg, shards), shards


def untrained_teacher(path: Path, seed: int = 0, **net) -> Path:
    """An untrained ``ViTModule`` teacher saved by ``teacher.save_untrained`` (as the pipeline
    saves one), net ``TINY_NET`` updated by ``net``: the weights of ``tiny_vit(seed=seed, **net)``."""
    from winft_lightning.models.teacher import save_untrained

    torch.manual_seed(seed)
    cfg = {"_target_": "winft_lightning.lit.modules.ViTModule", "net": {**TINY_NET, **net}}
    return save_untrained(cfg, path)


def trained_teacher(path: Path, shards: Path, steps: int = 150) -> Path:
    """A tiny teacher (``TINY_NET``, N = 16) trained for ``steps`` AdamW steps on the training
    split of ``shards`` (the digits), saved at ``path`` as the pipeline's Lightning checkpoint
    with its normalisation (mean 0.3053, std 0.3759, 16 px)."""
    import torch.nn.functional as F

    from winft_lightning.data.datamodule import ShardDataModule
    from winft_lightning.models import build_vit

    mean, std = [0.3053] * 3, [0.3759] * 3
    path = untrained_teacher(path)
    ckpt = torch.load(path, weights_only=True)
    net = build_vit(**TINY_NET)
    net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    dm = ShardDataModule(shards, batch_size=50, num_workers=0, img_size=16, mean=mean, std=std,
                         hflip=False)  # fmt: skip
    batches = [(b["image"], b["label"]) for b in dm.make_loader("train", rank=0, world_size=1)]
    torch.manual_seed(0)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    net.train()
    for step in range(steps):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    ckpt["state_dict"] = {f"net.{k}": v for k, v in net.state_dict().items()}
    ckpt["datamodule_hyper_parameters"] = {"mean": mean, "std": std, "img_size": 16}
    torch.save(ckpt, path)
    return path


def attention_maps(net: torch.nn.Module, x: torch.Tensor, **inputs) -> list[torch.Tensor]:
    """Each block's softmax ``[B, H, T, T]`` during one ``net(x, **inputs)`` (the batch's inputs
    are arguments, so ``capture.iter_block_attention``, which runs ``block(x)``, cannot pass
    them): hooks on ``attn_drop``, attention unfused, no grad."""
    from winft_lightning.core.capture import unfused_attention

    maps: list[torch.Tensor] = []
    hooks = [
        b.attn.attn_drop.register_forward_hook(lambda _m, _i, out: maps.append(out))
        for b in net.blocks
    ]
    try:
        with unfused_attention(net), torch.no_grad():
            net(x, **inputs)
    finally:
        for h in hooks:
            h.remove()
    return maps


def chance_top1(shards: Path, split: str = "test", q: float = 0.999) -> float:
    """The top-1 % that a model without skill stays under with probability ``q`` on ``split``:
    the binomial quantile at the share of the split's most frequent class (what a constant
    guess scores), over the split's images, counted from the shards themselves."""
    from collections import Counter

    from scipy.stats import binom

    from winft_lightning.data.shards import iter_tar, read_manifest

    shards = Path(shards)
    names = read_manifest(shards)["splits"][split]["shards"]
    labels = [int(m["cls"]) for name in names for _, m in iter_tar(shards / name)]
    share = max(Counter(labels).values()) / len(labels)
    return 100.0 * binom.ppf(q, len(labels), share) / len(labels)


def scrambled(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """``model`` with every parameter redrawn from N(0, std^2) (O(1) logits, so comparing
    two networks' logits tests every weight; timm's init leaves the head near zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def google_npz(model: torch.nn.Module, path: Path, big_vision: bool = False) -> Path:
    """A timm ViT's weights written as Google's JAX ``.npz`` (the inverse of timm's
    ``vision_transformer._load_weights``): the original ViT layout (``Transformer/
    encoderblock_{i}/MultiHeadDotProductAttention_1``, ``MlpBlock_3``, ``LayerNorm_2``), or
    big_vision's (keys under ``params/``, ``pos_embedding`` at the top, ``..._0``,
    ``MlpBlock_0``, ``LayerNorm_1``)."""
    sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    d = int(model.embed_dim)
    h = int(model.blocks[0].attn.num_heads)
    p = "params/" if big_vision else ""
    mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)
    pos = f"{p}pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"
    w = {
        f"{p}embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        f"{p}embedding/bias": sd["patch_embed.proj.bias"],
        f"{p}cls": sd["cls_token"],
        pos: sd["pos_embed"],
        f"{p}Transformer/encoder_norm/scale": sd["norm.weight"],
        f"{p}Transformer/encoder_norm/bias": sd["norm.bias"],
        f"{p}head/kernel": sd["head.weight"].T,
        f"{p}head/bias": sd["head.bias"],
    }
    for i in range(len(model.blocks)):
        b, s = f"{p}Transformer/encoderblock_{i}/", f"blocks.{i}."
        a = f"{b}MultiHeadDotProductAttention_{mha}/"
        for j, n in enumerate(("query", "key", "value")):
            w[f"{a}{n}/kernel"] = sd[s + "attn.qkv.weight"][j * d : (j + 1) * d].T.reshape(d, h, -1)
            w[f"{a}{n}/bias"] = sd[s + "attn.qkv.bias"][j * d : (j + 1) * d].reshape(h, -1)
        w[f"{a}out/kernel"] = sd[s + "attn.proj.weight"].reshape(d, h, -1).transpose(1, 2, 0)
        w[f"{a}out/bias"] = sd[s + "attn.proj.bias"]
        for ln, norm in ((0, "norm1"), (ln2, "norm2")):
            w[f"{b}LayerNorm_{ln}/scale"] = sd[f"{s}{norm}.weight"]
            w[f"{b}LayerNorm_{ln}/bias"] = sd[f"{s}{norm}.bias"]
        for r in range(2):
            w[f"{b}MlpBlock_{mlp}/Dense_{r}/kernel"] = sd[f"{s}mlp.fc{r + 1}.weight"].T
            w[f"{b}MlpBlock_{mlp}/Dense_{r}/bias"] = sd[f"{s}mlp.fc{r + 1}.bias"]
    with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a path
        np.savez(f, **w)
    return Path(path)


def store_builds(root: Path) -> dict[str, list[dict]]:
    """The artifact store's build log under ``root/outputs/cache``: its records by kind."""
    from winft_lightning.runtime.store import BUILDS

    by_kind: dict[str, list[dict]] = {}
    for line in (root / "outputs" / "cache" / BUILDS).read_text().splitlines():
        record = json.loads(line)
        by_kind.setdefault(record["kind"], []).append(record)
    return by_kind
