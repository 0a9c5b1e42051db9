"""benchmarks/llamacpp/ptq.py: llama.cpp's own PTQ baselines of issue 19's table, with llama.cpp's
own tools: F32; llama-quantize without and with an importance matrix (llama-imatrix on train.txt,
the first --imatrix-chunks chunks of 512 tokens) for every ftype; each file measured by
llama-perplexity on heldout.txt (-c 512 -t 2, every chunk) and by its size / bits per weight.
Resumable: results go to --json after every file and rows already there are not redone. Prints a
markdown table.

    python benchmarks/llamacpp/ptq.py [--f32 F] [--text-dir D] [--out-dir D] [--imatrix-chunks N]
                                      [--ftypes Q2_K,Q4_K_M,...] [--json PATH] [--table-only]
"""
import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llamacpp  # noqa: E402

# issue 19's four first, then the other ftypes: the grid can be stopped and resumed any time
FTYPES = ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_S", "Q3_K_L", "Q4_K_S", "Q5_K_S",
          "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
TABLE_ORDER = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M",
               "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]


def _save(path, res):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, path)


def run(a):
    res = json.load(open(a.json)) if os.path.exists(a.json) else {"rows": {}}
    res["meta"] = {"llama_cpp": llamacpp.version(), "cpu": _cpu(), "date":
                   datetime.date.today().isoformat(), "imatrix_chunks": a.imatrix_chunks,
                   "ctx": 512, "threads": 2}
    held = os.path.join(a.text_dir, "heldout.txt")
    train = os.path.join(a.text_dir, "train.txt")
    logs = os.path.join(a.out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    rows = res["rows"]

    def ppl(key, path):
        if key not in rows:
            r = llamacpp.perplexity(path, held, log=os.path.join(logs, key + ".ppl.log"))
            r.pop("running")
            r["file"] = path
            rows[key] = r
            _save(a.json, res)
            print(f"{key}: PPL {r['ppl']:.4f} ({r['tensor_mib']:.2f} MiB, {r['bpw']:.3f} bpw, "
                  f"{r['seconds']} s)", flush=True)

    ppl("F32", a.f32)
    imat = os.path.join(a.out_dir, f"smollm2-135m-imatrix-train{a.imatrix_chunks}.gguf")
    if not os.path.exists(imat):
        s = llamacpp.imatrix(a.f32, train, imat, a.imatrix_chunks, log=os.path.join(logs, "imatrix.log"))
        res["meta"]["imatrix_seconds"] = round(s, 1)
        _save(a.json, res)
    res["meta"]["imatrix"] = imat
    for ft in a.ftypes:
        for tag, im in (("", None), ("+imatrix", imat)):
            key = ft + tag
            out = os.path.join(a.out_dir, f"smollm2-135m-{ft}{'-imatrix' if im else ''}.gguf")
            if key not in rows:
                if not os.path.exists(out):
                    llamacpp.quantize(a.f32, out, ft, imatrix=im,
                                      log=os.path.join(logs, key + ".quantize.log"))
                ppl(key, out)
    return res


def _cpu():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def table(res, ftypes):
    rows = res["rows"]
    f32 = rows["F32"]["ppl"]
    print("| ftype | MiB | bits/weight | PPL | vs F32 | PPL with imatrix | vs F32 |")
    print("|---|---|---|---|---|---|---|")
    r = rows["F32"]
    print(f"| F32 | {r['tensor_mib']:.1f} | {r['bpw']:.2f} | {f32:.2f} ± {r['ppl_err']:.2f} | | | |")
    for ft in ftypes:
        if ft not in rows:
            continue
        r, ri = rows[ft], rows.get(ft + "+imatrix")
        cells = [ft, f"{r['tensor_mib']:.1f}", f"{r['bpw']:.2f}", f"{r['ppl']:.2f}",
                 f"{100 * (r['ppl'] / f32 - 1):+.1f}%"]
        cells += ([f"{ri['ppl']:.2f}", f"{100 * (ri['ppl'] / f32 - 1):+.1f}%"] if ri else ["", ""])
        print("| " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--f32", default="/work/llama.cpp/models/smollm2-135m-f32.gguf")
    ap.add_argument("--text-dir", default="/work/llama.cpp/text")
    ap.add_argument("--out-dir", default="/work/llama.cpp/models")
    ap.add_argument("--imatrix-chunks", type=int, default=200)
    ap.add_argument("--ftypes", default=",".join(FTYPES))
    ap.add_argument("--json", default="/work/llama.cpp/models/ptq.json")
    ap.add_argument("--table-only", action="store_true")
    a = ap.parse_args()
    a.ftypes = [f for f in a.ftypes.split(",") if f]
    res = json.load(open(a.json)) if a.table_only else run(a)
    print(json.dumps(res["meta"]))
    table(res, [f for f in TABLE_ORDER if f in a.ftypes])


if __name__ == "__main__":
    main()
