"""Running statistics per parameter, keyed by the parameter's dotted name (``fqn``).

`RunningStats` holds one small object per statistic asked for (so memory is one state tensor per statistic
per tracked weight, two for PLATON) and feeds them each optimizer step, forward pass or epoch snapshot:

- ``abs_weight`` (`AbsWeight`): exponential moving average of `|w|`: m_1 = `|w_1|`,
  m_n = β·m_{n-1} + (1-β)·`|w_n|`.
- ``abs_grad`` (`AbsGrad`): exponential moving average of `|g|`, same recursion.
- ``movement`` (`Movement`): running sum Σ_n w_n·g_n (movement pruning scores −Σ w·g, Sanh et al. 2020).
- ``taylor`` (`Taylor`): running sum Σ_n `|w_n·g_n|` (first-order Taylor importance, Molchanov et al. 2019).
- ``time_weighted`` (`TimeWeighted`): time-weighted average of `|w|` over snapshots (one per epoch by default),
  later snapshots weigh more: Σ_i c_i·`|w_i|` / Σ_i c_i with c_i = √i for snapshot i = 1, 2, ... over the last
  ``window`` snapshots (all if ``window`` is None) — "Systematic Weight Evaluation for Pruning LLMs",
  arXiv 2502.17071.
- ``input_norm`` (`InputNorm`): per input feature j of a 2-D weight, EMA over training forward passes of the mean
  over tokens of x_j² (fed by `RunningStats.add_inputs`); √ of it scales `|w|` in the running Wanda score
  `|w_ij|`·‖x_j‖ (Sun et al. 2023).
- ``platon`` (`Platon`): PLATON (Zhang et al., ICML 2022): sensitivity I_t = `|w_t·g_t|`, its EMA
  Ī_t = β₁·Ī_{t-1} + (1-β₁)·I_t and the EMA of its uncertainty Ū_t = β₂·Ū_{t-1} + (1-β₂)·`|I_t − Ī_t|`, both
  from zero; the value is the upper confidence bound score Ī_t·Ū_t. Two state tensors per weight.

PLATON's uncertainty uses Ī_t *after* its update with I_t, as the paper's equations write it (the authors' released
code subtracts Ī_{t-1}, the value before the update). Both averages start from zero without bias correction, as in
the paper and its code, so after one step Ī = (1-β₁)·I and Ū = (1-β₂)·β₁·I. The betas are ``platon_betas``
(default `PLATON_BETAS`, the paper's 0.85 and 0.95); ``decay`` is for the other EMAs.

Every update is computed in float32 whatever dtype stores the state; 16-bit state is rounded stochastically,
without bias (`accumulate`). Each optimizer step is read once for all the
statistics (`Step`: the float32 casts, one finiteness check, w·g formed
once). A step whose gradients hold a NaN or an infinity is skipped and counted in ``skipped``; it is never folded
into the statistics. Updates run under ``torch.no_grad()`` with ``torch._foreach_*`` kernels: one fused pass per
statistic, no per-element Python.

Examples:
    >>> w = torch.nn.Parameter(torch.ones(2, 2))
    >>> stats = RunningStats({"w": w}, stats=("abs_weight",), decay=0.5)
    >>> w.grad = torch.zeros(2, 2)
    >>> stats.update({"w": w})
    True
"""

from lightning_prune.trackers.accumulate import Accumulator, stochastic_round
from lightning_prune.trackers.base import Statistic, Step, StepStatistic
from lightning_prune.trackers.input_norm import InputNorm
from lightning_prune.trackers.magnitudes import AbsGrad, AbsWeight
from lightning_prune.trackers.platon import PLATON_BETAS, Platon
from lightning_prune.trackers.products import Movement, Taylor
from lightning_prune.trackers.running import STATS, RunningStats
from lightning_prune.trackers.time_weighted import TimeWeighted, snapshot_weights

__all__ = [
    "PLATON_BETAS",
    "STATS",
    "AbsGrad",
    "AbsWeight",
    "Accumulator",
    "InputNorm",
    "Movement",
    "Platon",
    "RunningStats",
    "Statistic",
    "Step",
    "StepStatistic",
    "Taylor",
    "TimeWeighted",
    "snapshot_weights",
    "stochastic_round",
]
