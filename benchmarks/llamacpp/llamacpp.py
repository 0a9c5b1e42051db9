"""benchmarks/llamacpp/llamacpp.py: thin Python wrappers around llama.cpp's own tools as built by
scripts/build_llamacpp.sh (llama-perplexity, llama-quantize, llama-imatrix, llama-bench) and the
size / bits-per-weight of a GGUF file (gguf-py). The tools live in $LOWBIT_LLAMA_CPP_DIR/bin
(default /work/llama.cpp/bin).

The evaluation protocol of every perplexity row: `llama-perplexity -m F -f heldout.txt -c 512
-t 2` (llama.cpp's default batch, every 512-token chunk of the file, the second half of each chunk
scored), the final "PPL = x +/- e" line.
"""
import json
import os
import re
import subprocess
import time

DEFAULT_DIR = "/work/llama.cpp"


def tool(name, root=None):
    """Absolute path of llama.cpp tool `name` (llama-perplexity, ...)."""
    root = root or os.environ.get("LOWBIT_LLAMA_CPP_DIR") or DEFAULT_DIR
    p = os.path.join(root, "bin", name)
    if not os.access(p, os.X_OK):
        raise FileNotFoundError(f"{p}: not built (scripts/build_llamacpp.sh {root})")
    return p


def _run(cmd, log=None):
    t0 = time.time()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if log:
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n" + r.stdout)
    if r.returncode != 0:
        raise RuntimeError(f"{os.path.basename(cmd[0])} failed ({r.returncode}):\n{r.stdout[-3000:]}")
    return r.stdout, time.time() - t0


def gguf_stats(path):
    """File size (MiB), tensor bytes, weights and bits per weight (8 * tensor bytes / elements,
    llama.cpp's BPW) and the count of each tensor type."""
    import gguf

    r = gguf.GGUFReader(path)
    nbytes = sum(int(t.n_bytes) for t in r.tensors)
    nelem = sum(int(t.n_elements) for t in r.tensors)
    types = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"file_mib": os.path.getsize(path) / 2**20, "tensor_mib": nbytes / 2**20,
            "n_weights": nelem, "bpw": 8.0 * nbytes / nelem, "types": types}


_FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
_RUNNING = re.compile(r"\[(\d+)\]([0-9.]+|nan|inf),")


def perplexity(model, text, ctx=512, threads=2, chunks=None, extra=(), log=None):
    """llama-perplexity of `model` on the text file `text`: {"ppl", "ppl_err", "chunks",
    "running" (the running PPL after each chunk), "seconds"} plus gguf_stats(model)."""
    cmd = [tool("llama-perplexity"), "-m", model, "-f", text, "-c", str(ctx), "-t", str(threads)]
    if chunks:
        cmd += ["--chunks", str(chunks)]
    out, secs = _run(cmd + list(extra), log)
    m = _FINAL.search(out)
    if not m:
        raise RuntimeError(f"llama-perplexity printed no final estimate:\n{out[-3000:]}")
    running = [float(v) for _, v in _RUNNING.findall(out)]
    res = {"ppl": float(m.group(1)), "ppl_err": float(m.group(2)), "chunks": len(running),
           "running": running, "seconds": round(secs, 1), "ctx": ctx, "threads": threads}
    res.update(gguf_stats(model))
    return res


def quantize(src, dst, ftype, imatrix=None, threads=2, log=None):
    """llama-quantize [--imatrix I] src dst FTYPE (threads); returns the seconds it took."""
    cmd = [tool("llama-quantize")]
    if imatrix:
        cmd += ["--imatrix", imatrix]
    _, secs = _run(cmd + [src, dst, ftype, str(threads)], log)
    return secs


def imatrix(model, text, out, chunks, ctx=512, threads=2, log=None):
    """llama-imatrix on the first `chunks` chunks of `ctx` tokens of `text`; returns seconds."""
    cmd = [tool("llama-imatrix"), "-m", model, "-f", text, "-o", out, "-c", str(ctx),
           "--chunks", str(chunks), "-t", str(threads)]
    _, secs = _run(cmd, log)
    return secs


def bench(model, threads=2, n_prompt=512, n_gen=128, reps=3, log=None):
    """llama-bench -o json: [{"test": "pp512"/"tg128", "avg_ts", "stddev_ts", ...}]."""
    cmd = [tool("llama-bench"), "-m", model, "-t", str(threads), "-p", str(n_prompt),
           "-n", str(n_gen), "-r", str(reps), "-o", "json"]
    out, _ = _run(cmd, log)
    start = out.index("[")
    return json.loads(out[start:out.rindex("]") + 1])


def version():
    """llama.cpp's own version line (llama-bench --version)."""
    out, _ = _run([tool("llama-bench"), "--version"])
    return " ".join(out.split())
