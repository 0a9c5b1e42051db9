"""python/lowbit/distill/generate.py: the teacher's own training text (BitDistiller: sampled at
temperature 0.7 from text prefixes) — prompts cut from a text, batched sampling with the KV cache,
the padded training batches, and the safetensors cache keyed on the teacher and every argument."""
import hashlib
import json
import math
import numbers
import os
import random
import re

import torch


def prompts_from_text(text, n=None, prompt_chars=128, min_chars=512, seed=0):
    """BitDistiller's WikiText-style prompts: the first ``prompt_chars`` characters of every
    paragraph (blank-line separated; lines when there are no blank lines) longer than
    ``min_chars``; with ``n``, a seeded random choice of n of them."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    for name, v in (("prompt_chars", prompt_chars), ("min_chars", min_chars)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name}: must be a positive int, got {v!r}")
    paras = re.split(r"\n\s*\n", text) if re.search(r"\n\s*\n", text) else text.split("\n")
    paras = [p.strip() for p in paras]
    long = [p[:prompt_chars] for p in paras if len(p) > min_chars]
    if not long:
        raise ValueError(f"text: no paragraph longer than min_chars={min_chars} characters")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n: must be a positive int or None, got {n!r}")
        if n < len(long):
            long = random.Random(seed).sample(long, n)
    return long


class _Progress:
    """A transformers LogitsProcessor that only advances a progress bar once per new token."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, input_ids, scores):
        self.bar.update(1)
        return scores


def _digest_model(model):
    """A fingerprint of the model's weights and buffers (names, shapes, dtypes, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in list(model.state_dict().items()):
        t = t.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _model_identity(model):
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_json_string"):
        cfg = json.loads(cfg.to_json_string(use_diff=False))
        cfg.pop("transformers_version", None)
    return {"class": type(model).__name__, "config": cfg, "weights": _digest_model(model)}


def _eos_ids(model, tokenizer):
    ids = set()
    gc = getattr(model, "generation_config", None)
    for v in (getattr(gc, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return sorted(ids)


def _check_generate_args(max_new_tokens, temperature, top_p, batch_size, seed, train_batch_size):
    def pos_int(name, v):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name}: must be a positive int, got {v!r}")

    pos_int("max_new_tokens", max_new_tokens)
    pos_int("batch_size", batch_size)
    if train_batch_size is not None:
        pos_int("train_batch_size", train_batch_size)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or \
            not (0 < float(temperature) < math.inf):
        raise ValueError(f"temperature: must be a finite float > 0, got {temperature!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real)
                              or not (0 < float(top_p) <= 1)):
        raise ValueError(f"top_p: must be None or a float in (0, 1], got {top_p!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")


def pad_batches(sequences, batch_size, pad_id, ignore_index=-100):
    """Training batches from lists of token ids: ``batch_size`` sequences per batch (in order),
    right-padded to the longest of the batch; dicts of input_ids, attention_mask and labels
    (input_ids with padding set to ignore_index)."""
    out = []
    for s in range(0, len(sequences), batch_size):
        chunk = sequences[s:s + batch_size]
        L = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), L), dtype=torch.long)
        for i, x in enumerate(chunk):
            ids[i, :len(x)] = torch.as_tensor(x, dtype=torch.long)
            mask[i, :len(x)] = 1
        labels = ids.masked_fill(mask == 0, ignore_index)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def _load_cache(path, digest):
    from safetensors import safe_open

    if not os.path.exists(path):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("lowbit_generate_digest") != digest:
                return None
            ids, lengths = f.get_tensor("input_ids"), f.get_tensor("lengths")
    except Exception:  # not a readable cache: regenerate over it
        return None
    return [ids[i, :int(n)].tolist() for i, n in enumerate(lengths)]


def _save_cache(path, sequences, pad_id, key, digest):
    from safetensors.torch import save_file

    L = max(len(x) for x in sequences)
    ids = torch.full((len(sequences), L), pad_id, dtype=torch.long)
    for i, x in enumerate(sequences):
        ids[i, :len(x)] = torch.as_tensor(x, dtype=torch.long)
    lengths = torch.tensor([len(x) for x in sequences], dtype=torch.long)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    save_file({"input_ids": ids, "lengths": lengths}, tmp,
              metadata={"lowbit_generate_digest": digest, "lowbit_generate_key": json.dumps(key)})
    os.replace(tmp, path)  # a cache is either complete or absent


@torch.no_grad()
def generate_data(teacher, tokenizer, prompts, *, max_new_tokens=256, temperature=0.7,
                  top_p=None, batch_size=8, seed=0, out=None, num_prompts=None,
                  prompt_chars=128, train_batch_size=None, ignore_index=-100, progress=True):
    """BitDistiller's distillation data: the teacher's own continuations of ``prompts``.

    ``prompts``: a list of strings, or a text to cut prompts from (prompts_from_text: the first
    ``prompt_chars`` characters of each long paragraph, ``num_prompts`` of them chosen with
    ``seed``). Sampling (temperature, optional nucleus ``top_p``, no top-k) runs ``batch_size``
    prompts at a time through ``teacher.generate`` (left padding, attention masks, KV cache),
    seeded per batch from ``seed`` (deterministic on CPU for the same inputs and thread count),
    without touching the caller's RNG state; a sequence ends at its first EOS (kept) or after
    ``max_new_tokens``. Returns training batches of ``train_batch_size`` (default batch_size)
    sequences, prompt + continuation, right-padded: dicts of input_ids, attention_mask and
    labels (padding = ignore_index).

    ``out``: a .safetensors path. When it holds data generated with the same key — the
    teacher's class, config and weights, the tokenized prompts, every sampling argument and the
    seed — it is loaded instead of generating; otherwise it is (re)generated and written."""
    from transformers import GenerationConfig, LogitsProcessorList

    _check_generate_args(max_new_tokens, temperature, top_p, batch_size, seed, train_batch_size)
    if out is not None:
        if not isinstance(out, (str, os.PathLike)):
            raise TypeError(f"out: expected None or a .safetensors file path, got "
                            f"{type(out).__name__}")
        out = os.fspath(out)
        if os.path.isdir(out):
            raise ValueError(f"out: {out} is a directory; expected a .safetensors file path")
    if isinstance(prompts, str):
        prompts = prompts_from_text(prompts, n=num_prompts, prompt_chars=prompt_chars, seed=seed)
    elif num_prompts is not None:
        prompts = list(prompts)[:num_prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or \
            not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("prompts: expected a text or a non-empty list of non-empty strings")
    if not callable(getattr(teacher, "generate", None)):
        raise TypeError(f"teacher: expected a causal LM with .generate(), got "
                        f"{type(teacher).__name__}")
    eos = _eos_ids(teacher, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    enc = [tokenizer(p).input_ids for p in prompts]
    if any(len(e) == 0 for e in enc):
        raise ValueError("prompts: a prompt tokenizes to no tokens")
    key = {"format": 1, "teacher": _model_identity(teacher) if out else None,
           "prompts_sha": hashlib.sha256(json.dumps(enc).encode()).hexdigest(),
           "n_prompts": len(enc), "max_new_tokens": int(max_new_tokens),
           "temperature": float(temperature), "top_p": None if top_p is None else float(top_p),
           "batch_size": int(batch_size), "seed": int(seed), "eos": eos, "pad": int(pad_id)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    tb = train_batch_size or batch_size
    if out is not None:
        seqs = _load_cache(out, digest)
        if seqs is not None:
            if progress:
                print(f"generate_data: {len(seqs)} sequences loaded from {out}")
            return pad_batches(seqs, tb, pad_id, ignore_index)

    device = next(teacher.parameters()).device
    gcfg = GenerationConfig(do_sample=True, temperature=float(temperature),
                            top_p=1.0 if top_p is None else float(top_p), top_k=0,
                            max_new_tokens=int(max_new_tokens), pad_token_id=pad_id,
                            eos_token_id=eos or None, num_beams=1)
    n_batches = (len(enc) + batch_size - 1) // batch_size
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=n_batches * max_new_tokens, desc=f"generate ({len(enc)} "
                       f"prompts, {batch_size} at a time)", unit="step")
        except ImportError:
            bar = None
    procs = LogitsProcessorList([_Progress(bar)]) if bar is not None else None
    was = teacher.training
    teacher.eval()
    seqs = []
    devices = [device] if device.type == "cuda" else []
    try:
        for bi in range(n_batches):
            chunk = enc[bi * batch_size:(bi + 1) * batch_size]
            L = max(len(e) for e in chunk)
            ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), L), dtype=torch.long)
            for i, e in enumerate(chunk):  # left padding: every prompt ends at the same column
                ids[i, L - len(e):] = torch.as_tensor(e)
                mask[i, L - len(e):] = 1
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(int(seed) * 1_000_003 + bi)
                res = teacher.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       generation_config=gcfg, logits_processor=procs)
            res = res.cpu()
            new = res[:, L:]
            for i, e in enumerate(chunk):
                cont = new[i].tolist()
                for j, t in enumerate(cont):
                    if t in eos:
                        cont = cont[:j + 1]
                        break
                seqs.append(list(e) + cont)
            if bar is not None:  # a batch that stopped early (every row hit EOS)
                bar.update(max_new_tokens - new.shape[1])
    finally:
        teacher.train(was)
        if bar is not None:
            bar.close()
    if out is not None:
        _save_cache(out, seqs, pad_id, key, digest)
    return pad_batches(seqs, tb, pad_id, ignore_index)
