"""Every private torch/Lightning API the library uses (lightning_prune._compat) still does what the library relies on:
if a release moves one, the test here names it."""

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyLM, token_loader, trainer
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, StochasticWeightAveraging
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import nn

from lightning_prune import _compat


def test_fused_kernels_compute_what_their_loops_do():
    a, b = [torch.tensor([1.0, -2.0]), torch.tensor([3.0])], [torch.tensor([2.0, 0.5]), torch.tensor([-1.0])]
    assert [t.tolist() for t in _compat.foreach_mul(a, b)] == [[2.0, -1.0], [-3.0]]
    assert [t.tolist() for t in _compat.foreach_mul(a, 2.0)] == [[2.0, -4.0], [6.0]]
    assert [t.tolist() for t in _compat.foreach_abs(a)] == [[1.0, 2.0], [3.0]]
    assert [t.tolist() for t in _compat.foreach_sub(a, b)] == [[-1.0, -2.5], [4.0]]
    assert [float(t) for t in _compat.foreach_norm(a, 2)] == pytest.approx([5**0.5, 3.0])
    c = [t.clone() for t in a]
    _compat.foreach_mul_(c, [torch.tensor([True, False]), torch.tensor([False])])
    assert [t.tolist() for t in c] == [[1.0, 0.0], [0.0]]
    _compat.foreach_abs_(c)
    _compat.foreach_add_(c, b, alpha=2.0)
    assert [t.tolist() for t in c] == [[5.0, 1.0], [-2.0]]
    _compat.foreach_lerp_(c, b, 0.5)
    assert [t.tolist() for t in c] == [[3.5, 0.75], [-1.5]]
    _compat.foreach_copy_(c, a)
    assert [t.tolist() for t in c] == [t.tolist() for t in a]
    ints = [torch.tensor([7, -3], dtype=torch.int32)]  # the integer views clear_ multiplies
    _compat.foreach_mul_(ints, [torch.tensor([False, True])])
    assert ints[0].tolist() == [0, -3]


def test_a_tensors_version_counts_in_place_changes():
    t = torch.zeros(2)
    before = _compat.version(t)
    t.add_(1)
    assert _compat.version(t) == before + 1


def test_the_optimizer_inside_lightnings_wrapper_and_its_amp_flag():
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), fused=True)
    assert _compat.inner_optimizer(LightningOptimizer(opt)) is opt and _compat.inner_optimizer(opt) is opt
    assert _compat.steps_with_amp_scaling(LightningOptimizer(opt))
    assert not _compat.steps_with_amp_scaling(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))


def test_a_grad_scalers_scale_is_a_tensor_once_it_has_one():
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    assert _compat.loss_scale(scaler) is None  # lazily created
    scaler.scale(torch.ones(()))
    assert float(_compat.loss_scale(scaler)) == 8.0


@pytest.mark.parametrize("averaging", ["ema", "swa"])
def test_the_averaged_copy_weight_averaging_callbacks_keep(averaging):
    pl.seed_everything(0, verbose=False)
    average = (
        EMAWeightAveraging(decay=0.5) if averaging == "ema" else StochasticWeightAveraging(1e-2, swa_epoch_start=1)
    )
    model = TinyLM()
    trainer(callbacks=[average], max_epochs=2).fit(model, token_loader())
    copy = _compat.average_model(average)
    assert isinstance(copy, nn.Module)
    names = {n.removeprefix("module.") for n, _ in copy.named_parameters()}
    assert names == {n for n, _ in model.named_parameters()}
    assert _compat.average_model(ModelCheckpoint()) is None


def test_which_strategies_write_a_distributed_checkpoint():
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    assert _compat.saves_distributed_checkpoint(ModelParallelStrategy(save_distributed_checkpoint=True))
    assert not _compat.saves_distributed_checkpoint(ModelParallelStrategy(save_distributed_checkpoint=False))
    assert not _compat.saves_distributed_checkpoint(DDPStrategy())


def test_the_periodic_saves_of_model_checkpoint_ask_the_skip_hook(tmp_path):
    class Never(_compat.ConditionalCheckpoint):
        def hold(self, trainer):
            return True

    for how in ({"every_n_train_steps": 2}, {"every_n_epochs": 1}, {"monitor": "val_loss"}):
        never = Never(dirpath=tmp_path / str(len(how)), save_top_k=-1, **how)
        t = trainer(callbacks=[never], max_epochs=2, enable_checkpointing=True)
        t.fit(TinyLM(), token_loader(), val_dataloaders=token_loader(n=16))
        assert not (tmp_path / str(len(how))).exists() or not list((tmp_path / str(len(how))).iterdir()), how
    last = Never(dirpath=tmp_path / "last", save_last=True, save_top_k=0)  # save_last still writes at the end
    trainer(callbacks=[last], max_epochs=1, enable_checkpointing=True).fit(TinyLM(), token_loader())
    assert [p.name for p in (tmp_path / "last").iterdir()] == ["last.ckpt"]


def test_the_local_shard_of_a_dtensor_is_its_storage(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "one.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch, torch.distributed as dist
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.tensor import Shard, distribute_tensor
            from lightning_prune import _compat
            dist.init_process_group("gloo", rank=0, world_size=1)
            mesh = init_device_mesh("cpu", (1,))
            t = distribute_tensor(torch.arange(6.0).view(3, 2), mesh, [Shard(0)])
            _compat.local_tensor(t).mul_(2)
            assert t.full_tensor().tolist() == [[0, 2], [4, 6], [8, 10]]
            shape, offset = _compat.local_shape_and_offset((3, 2), mesh, [Shard(0)])
            assert tuple(shape) == (3, 2) and tuple(offset) == (0, 0)
            dist.destroy_process_group()
            print("ok")
            """
        )
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_training_data_loads_before_the_fit_with_max_steps_alone():
    import lightning.pytorch as pl
    from helpers import TinyLM, token_loader

    from lightning_prune._compat import load_training_data

    seen = []

    class Probe(pl.Callback):
        def setup(self, trainer, pl_module, stage):
            assert trainer.estimated_stepping_batches == 3 and trainer.num_training_batches == float("inf")
            load_training_data(trainer)
            seen.append(trainer.num_training_batches)

    trainer = pl.Trainer(
        max_steps=3,
        callbacks=[Probe()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyLM(), token_loader(n=64, batch_size=8))
    assert seen == [8]
