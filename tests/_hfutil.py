"""Helpers of the export / serialization tests: tiny Llama models built from a config, a tiny
byte-level BPE tokenizer trained offline with `tokenizers` (no hub), and child processes that
read checkpoints without importing lowbit. Never imports lowbit."""
import json
import os
import subprocess
import sys
import textwrap

import torch

VOCAB = 300
TEXT = ["the quick brown fox jumps over the lazy dog and runs far away 0123456789",
        "In the beginning was the word, and the word was with God.",
        "lowbit exports packed weights to compressed tensors, gptq and gguf files."]


def tiny_llama(seed, tied=False, hidden=128, inter=256, layers=2, heads=4, kv=2, vocab=VOCAB,
               **extra):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                   num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=kv, max_position_embeddings=64,
                                   tie_word_embeddings=tied, **extra)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms so a wrong norm tensor shows in the logits
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn(p.shape))
    return model


def tiny_tokenizer(vocab=VOCAB):
    """A byte-level BPE tokenizer of exactly ``vocab`` tokens (GPT-2 pre-tokenizer)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             show_progress=False)
    tk.train_from_iterator(TEXT * 20, tr)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>",
                                               eos_token="<|endoftext|>")
    assert len(tok) == vocab, len(tok)
    return tok


def run_child(code, *args, python=None, timeout=900):
    """Runs ``code`` in a fresh interpreter whose path does not hold lowbit; returns stdout.
    The child asserts it never imported lowbit."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = here  # this folder only: no lowbit
    code = textwrap.dedent(code) + "\nimport sys as _s\nassert 'lowbit' not in _s.modules\n"
    r = subprocess.run([python or sys.executable, "-c", code, *map(str, args)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"child failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                             f"{r.stderr[-6000:]}")
    return r.stdout


def read_json(path):
    with open(path) as f:
        return json.load(f)
