"""Independent plain-PyTorch reference of the distillation losses of FORMATS.md section 2 (the
composite way: log_softmax / softmax / elementwise KL terms), evaluated in float64 so that it is
the oracle for lowbit's float32 kernels. Never imports lowbit.

Gradients come from torch.autograd through these expressions (the teacher is detached). Terms
with a zero probability are selected away with torch.where before any multiplication (so an
entry that is -inf in both student and teacher contributes 0 and gets exactly zero gradient,
never 0 * inf = NaN). Nothing here is non-smooth in a way whose gradient a torch version could
choose (no clamp, max or abs on the gradient path; torch.where only selects), so the gradients
are the same on every torch version (unlike reference.py, which writes its clamp mask out).

A row with no finite logit in the student or in the teacher has no distribution: the selection
above would turn its 0/0 softmax into a silent 0, so such rows are computed by the textbook
formulas with torch's own log_softmax instead, which give NaN there (loss and gradient), as
plain torch does.
"""
import torch

KINDS = ("forward", "reverse", "cakld", "jsd")
REDUCTIONS = ("mean", "sum", "batchmean", "none")


def _xlogratio(x, lx, ly):
    """sum-able x * (lx - ly) with x == 0 -> 0 (also when lx - ly is inf or NaN)."""
    pos = x > 0
    d = torch.where(pos, lx - ly, torch.zeros_like(lx))
    return torch.where(pos, x * d, torch.zeros_like(x))


def _plain_rows(s, t, kind, gamma, beta):
    """The formulas of FORMATS.md 2 as written, nothing selected away (for rows without logits:
    torch's log_softmax of an all -inf row is NaN, and so is its gradient)."""
    lq, lp = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    q, p = lq.exp(), lp.exp()
    fkl = (p * (lp - lq)).sum(-1)
    rkl = (q * (lq - lp)).sum(-1)
    if kind == "forward":
        return fkl
    if kind == "reverse":
        return rkl
    if kind == "cakld":
        return gamma * rkl + (1 - gamma) * fkl
    lm = torch.log(beta * p + (1 - beta) * q)
    return beta * (p * (lp - lm)).sum(-1) + (1 - beta) * (q * (lq - lm)).sum(-1)


def ref_rows(student, teacher, kind, gamma=None, beta=0.5, temperature=1.0, keep=None):
    """Per-row losses, float64, shape (...). Rows all -inf in student or teacher -> NaN (loss
    and gradient). ``keep`` (bool, shape (...)): rows where it is False are masked: loss 0 and
    gradient exactly 0, whatever their logits (an infinite loss included)."""
    s0 = student.double() / temperature
    t0 = teacher.detach().double() / temperature
    none = torch.isneginf(s0).all(-1) | torch.isneginf(t0).all(-1)
    masked = torch.zeros_like(none) if keep is None else ~keep
    # rows without logits and masked rows are computed on zeros here, so no NaN or inf reaches
    # the selected-away values or their gradients; the unmasked rows without logits take their
    # values from _plain_rows below, the masked ones are 0
    out = (none | masked).unsqueeze(-1)
    s = torch.where(out, torch.zeros_like(s0), s0)
    t = torch.where(out, torch.zeros_like(t0), t0)
    dead = none & ~masked
    lq = torch.log_softmax(s, -1)
    lp = torch.log_softmax(t, -1)
    q = lq.exp()
    p = lp.exp()
    if kind == "forward":
        rows = _xlogratio(p, lp, lq).sum(-1)
    elif kind == "reverse":
        rows = _xlogratio(q, lq, lp).sum(-1)
    elif kind == "cakld":
        fkl = _xlogratio(p, lp, lq).sum(-1)
        rkl = _xlogratio(q, lq, lp).sum(-1)
        # a term of weight 0 is absent (gamma 0 is FKL, 1 is RKL), so an infinite unused term
        # (p = 0 where q > 0: RKL = +inf) cannot make 0 * inf = NaN
        rows = fkl if gamma == 0 else rkl if gamma == 1 else gamma * rkl + (1 - gamma) * fkl
    elif kind == "jsd":
        m = beta * p + (1 - beta) * q
        lm = torch.log(torch.where(m > 0, m, torch.ones_like(m)))  # m = 0 only where p = q = 0
        rows = beta * _xlogratio(p, lp, lm).sum(-1) + (1 - beta) * _xlogratio(q, lq, lm).sum(-1)
    else:
        raise ValueError(kind)
    if bool(dead.any()):
        rows = rows.index_put((dead,), _plain_rows(s0[dead], t0[dead], kind, gamma, beta))
    return torch.where(masked, torch.zeros_like(rows), rows)


def ref_loss(student, teacher, kind, gamma=None, beta=0.5, temperature=1.0, labels=None,
             ignore_index=-100, reduction="mean"):
    keep = None if labels is None else labels != ignore_index
    rows = ref_rows(student, teacher, kind, gamma, beta, temperature, keep)
    if labels is not None:
        rows = torch.where(keep, rows, torch.zeros_like(rows))
        n_keep = int(keep.sum())
    else:
        n_keep = rows.numel()
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / max(n_keep, 1)
    if reduction == "batchmean":
        return total / max(student.shape[0] if student.dim() >= 2 else 1, 1)
    raise ValueError(reduction)


def ref_gamma(teacher_logits, labels, method="target", ignore_index=-100):
    """Mean over unmasked positions of p_T(label) ("target") or max_v p_T(v) ("max")."""
    V = teacher_logits.shape[-1]
    p = torch.softmax(teacher_logits.double().reshape(-1, V), -1)
    if labels is None:
        keep = torch.ones(p.shape[0], dtype=torch.bool)
    else:
        keep = labels.reshape(-1) != ignore_index
    if method == "target":
        lab = labels.reshape(-1)[keep]
        vals = p[keep].gather(1, lab.unsqueeze(1)).squeeze(1)
    else:
        vals = p[keep].amax(-1)
    return float(vals.sum() / keep.sum())
