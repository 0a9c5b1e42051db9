"""python/lowbit/nn.py: nn.Module forms of lowbit's functional API."""
import torch

from .kl_loss import kl_div_loss


class DistillLoss(torch.nn.Module):
    """Module form of :func:`lowbit.kl_div_loss`: the loss settings are fixed at construction,
    ``forward(student_logits, teacher_logits, labels=None)`` returns the loss.

        crit = lowbit.nn.DistillLoss(kind="cakld", gamma=0.7, temperature=1.0)
        loss = crit(student_logits, teacher_logits, labels)
    """

    def __init__(self, kind="cakld", gamma=None, beta=0.5, temperature=1.0, ignore_index=-100,
                 reduction="mean"):
        super().__init__()
        from .kl_loss import _check_args

        _check_args(kind, gamma, beta, temperature, ignore_index, reduction)  # fail early
        self.kind, self.gamma, self.beta = kind, gamma, beta
        self.temperature, self.ignore_index, self.reduction = temperature, ignore_index, reduction

    def forward(self, student_logits, teacher_logits, labels=None):
        return kl_div_loss(student_logits, teacher_logits, kind=self.kind, gamma=self.gamma,
                           beta=self.beta, temperature=self.temperature, labels=labels,
                           ignore_index=self.ignore_index, reduction=self.reduction)

    def extra_repr(self):
        return (f"kind={self.kind!r}, gamma={self.gamma}, beta={self.beta}, "
                f"temperature={self.temperature}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}")


from .qlinear import QuantLinear  # noqa: E402
from .sparse24 import SparseLinear24  # noqa: E402

__all__ = ["DistillLoss", "QuantLinear", "SparseLinear24"]
