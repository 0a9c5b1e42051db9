"""python/lowbit/distill/batches.py: the batches every part of lowbit.distill takes — a tensor
of token ids, or a dict with input_ids (+ attention_mask, labels) — checked, turned into the
model's inputs, next-token labels and logits."""
import torch


def batch_ids(batch):
    """The batch's token ids, the batch checked first: a 2-D integer tensor, or a dict with
    one under "input_ids" (and attention_mask / labels of the same shape when given)."""
    if isinstance(batch, dict):
        if "input_ids" not in batch:
            raise ValueError(f"batch: a dict batch needs 'input_ids' (got keys {sorted(batch)})")
        ids, what = batch["input_ids"], "batch['input_ids']"
    elif isinstance(batch, torch.Tensor):
        ids, what = batch, "batch"
    else:
        raise TypeError(f"batch: expected a tensor of token ids or a dict, got "
                        f"{type(batch).__name__}")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or \
            ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        got = (f"a {ids.dim()}-D {ids.dtype} tensor" if isinstance(ids, torch.Tensor)
               else type(ids).__name__)
        raise ValueError(f"{what}: expected a 2-D integer tensor of token ids (batch, "
                         f"sequence), got {got}")
    if isinstance(batch, dict):
        for key in ("attention_mask", "labels"):
            v = batch.get(key)
            if v is not None and (not isinstance(v, torch.Tensor) or v.shape != ids.shape):
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"batch: {key} {got} does not match input_ids "
                                 f"{tuple(ids.shape)}")
    return ids


def model_inputs(batch):
    """The model's keyword inputs of a batch (labels are not passed: the loss is ours)."""
    ids = batch_ids(batch)
    if isinstance(batch, dict):
        return {k: v for k, v in batch.items() if k != "labels"}
    return {"input_ids": ids}


def next_token_labels(batch, ignore_index):
    """Next-token labels aligned with logits[:, :-1]: batch["labels"][:, 1:] when given, else the
    ids shifted. A position is ignored when its target is ignore_index or padding, or when the
    position itself is padding (attention_mask 0), so padded rows contribute nothing."""
    ids = batch_ids(batch)
    if isinstance(batch, dict) and batch.get("labels") is not None:
        labels = batch["labels"][:, 1:].clone()
    else:
        labels = ids[:, 1:].clone()
    if isinstance(batch, dict) and batch.get("attention_mask") is not None:
        m = batch["attention_mask"]
        labels[(m[:, 1:] == 0) | (m[:, :-1] == 0)] = ignore_index
    return labels


def model_logits(model, batch):
    out = model(**model_inputs(batch))
    return out.logits if hasattr(out, "logits") else out
