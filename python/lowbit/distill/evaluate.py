"""python/lowbit/distill/evaluate.py: evaluation helpers of lowbit.distill — the perplexity of a
causal LM over batches, and CAKLD's confidence coefficient gamma estimated from the teacher."""
import math

import torch
import torch.nn.functional as F

from ..kl_loss import GammaEstimator
from .batches import model_logits, next_token_labels


@torch.no_grad()
def estimate_gamma_from(teacher, batches, method="target", ignore_index=-100):
    """CAKLD's confidence coefficient: the teacher's mean probability of the label token
    ("target") or its mean max probability ("max"), over unmasked positions of ``batches``."""
    est = GammaEstimator(method=method, ignore_index=ignore_index)
    for b in batches:
        logits = model_logits(teacher, b)[:, :-1]
        est.update(logits, next_token_labels(b, ignore_index))
    return est.value


@torch.no_grad()
def perplexity(model, batches, ignore_index=-100):
    """Token-level perplexity of a causal LM over ``batches`` (next-token cross-entropy over the
    unmasked positions)."""
    was = model.training
    model.eval()
    nll, count = 0.0, 0
    for b in batches:
        logits = model_logits(model, b)[:, :-1].float()
        labels = next_token_labels(b, ignore_index)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=ignore_index, reduction="sum")
        nll += loss.item()
        count += int((labels != ignore_index).sum())
    model.train(was)
    return math.exp(nll / max(count, 1))
