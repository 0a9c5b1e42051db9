"""benchmarks/llamacpp/random_llama_gguf.py: writes a Llama GGUF with seeded random weights
(N(0, 0.02) matrices, norms 1) in the TinyLlama-1.1B shape of benchmarks/bench_decode.py
(hidden 2048, 22 layers, intermediate 5632, 32 heads, 4 KV heads, vocab 32000, untied head), for
llama-bench speed baselines: nothing is downloaded and no torch model is built (numpy arrays go
straight to gguf-py's GGUFWriter). The vocabulary is a synthetic SentencePiece-style one (<unk>,
<s>, </s>, the 256 byte tokens, filler pieces): llama-bench feeds random token ids, so only its
size matters. Weights in F16 (default) or F32; llama-quantize makes Q4_0 / Q4_K_M from it.

    python benchmarks/llamacpp/random_llama_gguf.py OUT.gguf [--f32] [--seed 0]
"""
import argparse
import os

import numpy as np

TINYLLAMA = dict(hidden=2048, layers=22, inter=5632, heads=32, kv=4, vocab=32000)


def write(path, hidden, layers, inter, heads, kv, vocab, f32=False, seed=0, ctx=2048):
    import gguf

    rng = np.random.default_rng(seed)
    dt = np.float32 if f32 else np.float16
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name("random-llama")
    w.add_block_count(layers)
    w.add_context_length(ctx)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if f32 else gguf.LlamaFileType.MOSTLY_F16)
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * 256
    tokens += [f"\u2581p{i}" for i in range(vocab - len(tokens))]
    types += [T.NORMAL] * (vocab - len(types))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(vocab)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(dt)

    ones = np.ones(hidden, dtype=np.float32)
    hd = hidden // heads
    w.add_tensor("token_embd.weight", mat(vocab, hidden))
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", mat(vocab, hidden))
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", mat(hidden, hidden))
        w.add_tensor(p + "attn_k.weight", mat(kv * hd, hidden))
        w.add_tensor(p + "attn_v.weight", mat(kv * hd, hidden))
        w.add_tensor(p + "attn_output.weight", mat(hidden, hidden))
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "ffn_gate.weight", mat(inter, hidden))
        w.add_tensor(p + "ffn_up.weight", mat(inter, hidden))
        w.add_tensor(p + "ffn_down.weight", mat(hidden, inter))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--f32", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    write(a.out, **TINYLLAMA, f32=a.f32, seed=a.seed)
    print(f"{a.out}: {os.path.getsize(a.out) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
