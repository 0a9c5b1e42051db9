"""benchmarks/llamacpp/bench.py: llama.cpp's own speed baselines (llama-bench, -t 2) for the CPU
speed issue: prompt processing (pp) and token generation (tg) tokens/s of the given GGUF files;
each run's JSON goes to --json, a markdown table to stdout. Each file is benched on its own
(llama-bench -m F -t 2 -p P -n G -r R -o json); the machine is shared, so the numbers are
indicative (the stddev column says how much they moved between repetitions).

    python benchmarks/llamacpp/bench.py F.gguf [F2.gguf ...] [-p 512] [-n 128] [-r 3]
                                        [--json PATH]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llamacpp  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    print(llamacpp.version())
    rows = []
    print("| model | MiB | bits/weight | test | tokens/s | stddev |")
    print("|---|---|---|---|---|---|")
    for m in a.models:
        st = llamacpp.gguf_stats(m)
        for r in llamacpp.bench(m, threads=a.t, n_prompt=a.p, n_gen=a.n, reps=a.r):
            test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
            r.update(file=m, bpw=st["bpw"], tensor_mib=st["tensor_mib"])
            rows.append(r)
            print(f"| {os.path.basename(m)} | {st['tensor_mib']:.1f} | {st['bpw']:.2f} | {test} | "
                  f"{r['avg_ts']:.2f} | {r['stddev_ts']:.2f} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
