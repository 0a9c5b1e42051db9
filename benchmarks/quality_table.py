"""benchmarks/quality_table.py: prints the QAT quality table (markdown) from the results.json
files that benchmarks/quality_grid.sh's runs of examples/qat_selfdistill.py wrote under OUT."""
import glob
import json
import math
import os
import sys


def main(out):
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "*", "results.json"))):
        with open(path) as f:
            r = json.load(f)
        def ppl(pred, default=None):
            return next((v for name, v, *_ in r["rows"] if pred(name)), default)

        fp = ppl(lambda n: n.startswith("full precision"))
        rtn = ppl(lambda n: n.startswith("RTN") and "clipping" not in n)
        clip = ppl(lambda n: "clipping" in n, float("nan"))
        qat = ppl(lambda n: n.startswith("QAT"))
        # share of the RTN log-perplexity gap that QAT closes (the 2-bit goal: >= 85%)
        closed = 1 - math.log(qat / fp) / math.log(rtn / fp)
        # CPU seconds of the process: unlike wall time, not stretched by other work on the cores
        st = r["stages_wall_cpu_s"]
        qat_s, run_s = st.get("QAT", [0, float("nan")])[1], sum(v[1] for v in st.values())
        rows.append((r["spec"], r["data"], r["steps"], fp, rtn, clip, qat, closed, qat / fp - 1,
                     qat_s, run_s))
    rows.sort(key=lambda t: (t[2], t[0], t[1]))
    print("| spec | data | steps | FP | RTN | RTN+clip | QAT | gap closed | QAT vs FP | "
          "QAT CPU s | run CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s, d, n, fp, rtn, clip, qat, closed, rel, qs, ws in rows:
        print(f"| {s} | {d} | {n} | {fp:.2f} | {rtn:.2f} | {clip:.2f} | **{qat:.2f}** | "
              f"{100 * closed:.1f}% | {100 * rel:+.1f}% | {qs:.0f} | {ws:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/quality")
