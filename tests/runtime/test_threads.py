"""runtime.threads: the OpenMP wait policy the study's processes run with
(``study.omp_wait_policy``), set before torch loads; a user's own ``OMP_WAIT_POLICY`` kept."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from helpers import TINY_NET
from winft_lightning.runtime.threads import ENV, set_wait_policy

# what python -m winft_lightning.study does before it imports the training stack, then a tiny
# ViT of the study's teacher kind trained for two AdamW steps on two threads under that policy
FRESH = """
import json, sys
from hydra import compose, initialize_config_module
from winft_lightning.runtime.threads import set_wait_policy
with initialize_config_module("winft_lightning.conf", version_base="1.3"):
    study = compose(config_name="study",
                    overrides=["study=paper_grid", "study.omp_wait_policy=passive"]).study
print("policy", set_wait_policy(study.omp_wait_policy))
assert "torch" not in sys.modules
import torch
from winft_lightning.models import build_vit
torch.set_num_threads(2)
torch.manual_seed(0)
net = build_vit(**json.loads(sys.argv[1]))
opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
for _ in range(2):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
print("loss", float(loss))
"""


def test_the_policy_reaches_openmp_when_set_before_torch_loads():
    """A fresh interpreter, as the study's: the policy set from the study config (passive, as a
    shared host passes it) before the first ``import torch``, and libgomp reports it
    (``OMP_DISPLAY_ENV``); training runs."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "OMP_NUM_THREADS")}
    env["OMP_DISPLAY_ENV"] = "true"  # libgomp prints its settings to stderr when it loads
    argv = [sys.executable, "-c", FRESH, json.dumps(TINY_NET)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "policy PASSIVE" in proc.stdout
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in proc.stderr
    loss = float(proc.stdout.split("loss ")[1])
    assert loss == loss and loss > 0  # finite


@pytest.fixture
def no_policy(monkeypatch):
    """No OMP_WAIT_POLICY in the environment; whatever a test sets is undone after it."""
    monkeypatch.setenv(ENV, "unset")  # recorded: the environment is restored after the test
    monkeypatch.delenv(ENV)


def test_a_users_policy_is_kept_and_a_bad_one_refused(no_policy, monkeypatch, caplog):
    monkeypatch.setenv(ENV, "active")
    with caplog.at_level(logging.INFO, logger="winft_lightning.runtime.threads"):
        assert set_wait_policy("passive") == "active"
    assert os.environ[ENV] == "active" and "from the environment kept" in caplog.text
    monkeypatch.delenv(ENV)
    assert set_wait_policy(None) is None and ENV not in os.environ
    with pytest.raises(ValueError, match="omp_wait_policy"):
        set_wait_policy("spin")
    assert ENV not in os.environ


def test_set_after_torch_loaded_reaches_the_processes_started_later(no_policy, caplog):
    """This test process has torch loaded: the policy is set for its children, with a warning
    that it itself keeps the one it loaded with."""
    with caplog.at_level(logging.WARNING, logger="winft_lightning.runtime.threads"):
        assert set_wait_policy("passive") == "PASSIVE"
    assert "torch is already loaded" in caplog.text
    child = subprocess.run([sys.executable, "-c", f"import os; print(os.environ['{ENV}'])"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert child.stdout.strip() == "PASSIVE"
