"""Statistics that are right: exact accumulation in 16-bit state, attention inputs per row block, no inputs read from
modules that have none, and gradients read unscaled under a fused optimizer."""

import math

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyLM, token_loader, trainer
from torch import nn

from lightning_prune import AtEpochs, ImportanceTracking, ScheduledPruning
from lightning_prune.trackers import RunningStats, stochastic_round


def _drift(dtype: torch.dtype, steps: int = 1000) -> RunningStats:
    """|w| drifts from 1.0 to 1.5 over ``steps`` steps with a constant gradient of 0.01."""
    w = nn.Parameter(torch.ones(4096))
    stats = RunningStats({"w": w}, stats=("abs_weight", "taylor"), decay=0.99, dtype=dtype)
    for i in range(steps):
        with torch.no_grad():
            w.fill_(1.0 + 0.5 * i / (steps - 1))
        w.grad = torch.full_like(w, 0.01)
        stats.update({"w": w})
    return stats


def test_bfloat16_state_stays_within_one_percent_of_float32_on_a_drift():
    exact, low = _drift(torch.float32), _drift(torch.bfloat16)
    assert low.state["abs_weight"]["w"].dtype == torch.bfloat16  # half the memory
    # Hand values: the Taylor sum is Σ_i 0.01·(1 + 0.5·i/999) = 10 + 0.01·0.5·999·1000/2/999 = 12.5.
    assert exact.value("taylor", "w").mean().item() == pytest.approx(12.5, rel=1e-4)
    for stat in ("abs_weight", "taylor"):
        ratio = (low.value(stat, "w") / exact.value(stat, "w")).mean().item()
        assert abs(ratio - 1) < 0.01, (stat, ratio)  # rounding to nearest: EMA 1.11 vs 1.45, sum 4.0 vs 12.5
    # Each entry carries rounding noise (unbiased: the means above are exact). The EMA's spread is about one bf16
    # step (2⁻⁷ near 1.45) times √(p(1−p) / (2(1−β))) ≈ 3.5 steps: ~1.9 %; a sum's about its bf16 step near 12.5
    # (1/16) times √(steps · p(1−p)).
    ema = (low.value("abs_weight", "w") / exact.value("abs_weight", "w") - 1).std().item()
    assert ema < 0.025
    spread = (low.value("taylor", "w") - exact.value("taylor", "w")).std().item()
    assert spread < (1 / 16) * math.sqrt(1000 * 0.25)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour(dtype):
    x = torch.full((100_000,), 1.0 + 1 / 1000)
    rounded = stochastic_round(x, dtype, torch.Generator().manual_seed(0))
    assert rounded.dtype == dtype
    assert len(rounded.unique()) == 2  # the two neighbours of x in dtype
    assert rounded.float().mean().item() == pytest.approx(x[0].item(), abs=2e-5)


class CrossAttention(nn.Module):
    """Queries from one sequence, keys and values from another of a different scale."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return self.attn(q, key=kv, value=kv, need_weights=False)[0]


def test_attention_rows_read_their_own_inputs():
    tracking = ImportanceTracking(stats=("input_norm",), parameters=["net.attn.in_proj_weight"])

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = CrossAttention()

        def training_step(self, batch, batch_idx):
            q, kv = batch
            return self.net(q, kv).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    q = torch.ones(2, 3, 4)  # mean x² = 1 per feature
    kv = torch.full((2, 5, 4), 3.0)  # mean x² = 9 per feature
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(q, kv), batch_size=2)
    trainer(callbacks=[tracking], max_steps=1).fit(Module(), loader)
    fqn = "net.attn.in_proj_weight"
    assert tracking.stats.state["input_norm"][fqn].tolist() == [[1.0] * 4, [9.0] * 4, [9.0] * 4]
    scale = tracking.stats.input_scale(fqn)  # (3·4, 4): query rows by √1, key and value rows by √9
    assert torch.equal(scale, torch.tensor([1.0] * 4 + [3.0] * 8)[:, None].expand(12, 4))


def test_an_embedding_selected_for_tracking_gets_no_input_hook():
    pl.seed_everything(0, verbose=False)
    tracking = ImportanceTracking(stats=("input_norm",), parameters=["embed.weight", "blocks.0.fc1.weight"])
    trainer(callbacks=[tracking], max_epochs=1).fit(TinyLM(), token_loader())
    assert set(tracking.stats.in_dims) == {"blocks.0.fc1.weight"}  # token ids are not features
    assert int(tracking.stats.inputs_seen["blocks.0.fc1.weight"]) == 8
    with pytest.raises(KeyError, match="not a tracked 2-D weight of a Linear"):
        tracking.stats.input_scale("embed.weight")


def test_wanda_on_an_embedding_is_a_clear_error_at_setup():
    pruning = ScheduledPruning(AtEpochs({1: 0.5}), criterion="wanda", parameters=["embed.weight"])
    with pytest.raises(ValueError, match=r"\['embed.weight'\] is not such a weight"):
        trainer(callbacks=[ImportanceTracking(parameters=["embed.weight"]), pruning], max_epochs=2).fit(
            TinyLM(), token_loader()
        )
    assert not pruning.events


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed with a GradScaler needs a GPU")
def test_fused_optimizer_under_16_mixed_is_read_unscaled():
    class Fused(TinyLM):
        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3, fused=True)

    results = {}
    for precision in ("16-mixed", "32-true"):
        pl.seed_everything(0, verbose=False)
        tracking = ImportanceTracking(stats=("abs_grad",), decay=0.0)
        trainer(accelerator="gpu", callbacks=[tracking], max_steps=1, precision=precision).fit(Fused(), token_loader())
        results[precision] = sum(tracking.stats.value("abs_grad", f).sum().item() for f in tracking.fqns)
    assert math.isclose(results["16-mixed"], results["32-true"], rel_tol=0.05)  # not 65536× larger
