"""The distillation loss (Hinton et al. 2015), shared by [`FineTune`][lightning_prune.FineTune] and
[`Distillation`][lightning_prune.Distillation]: T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) over the tokens.

Examples:
    >>> logits = torch.zeros(2, 3, 5)
    >>> float(distillation_loss(logits, logits, temperature=2.0))
    0.0
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["distillation_loss"]


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over tokens; logits are (..., V)."""
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=-1).flatten(0, -2)  # (N, V)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=-1).flatten(0, -2)  # (N, V)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * t * t
