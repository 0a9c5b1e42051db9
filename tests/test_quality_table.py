"""tests/test_quality_table.py: benchmarks/quality_table.py (the quality table) reads the
results.json files of examples/qat_selfdistill.py and prints each run's perplexities, the share
of the RTN log-perplexity gap QAT closes and QAT against full precision, checked here against
those definitions on random perplexities."""
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


def _write(run_dir, spec, data, steps, fp, rtn, clip, qat):
    os.makedirs(run_dir)
    # the row names examples/qat_selfdistill.py writes
    rows = [["full precision (fp32)", fp, "-"], [f"RTN {spec}", rtn, "-"],
            [f"RTN + asym. clipping (coarse grid) {spec}", clip, "20s"],
            [f"QAT {spec} ({steps} steps, {data} data, cakld, gamma 0.300)", qat, "200s"]]
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({"spec": spec, "steps": steps, "data": data, "rows": rows,
                   "stages_wall_cpu_s": {"QAT": [210.0, 400.0], "generate data": [75.0, 140.0]},
                   "wall_s": 300.0}, f)


def test_table_rows_follow_the_definitions(tmp_path, capsys):
    rnd = random.Random(13)
    runs = []
    for i, (spec, data) in enumerate([("int2-g64-asym", "text"), ("nf3-g64", "generated")]):
        fp = rnd.uniform(10, 30)
        rtn = fp * rnd.uniform(2, 1e4)
        qat = fp * rnd.uniform(1.01, 2)
        clip = rnd.uniform(qat, rtn)
        _write(str(tmp_path / f"run{i}"), spec, data, 40, fp, rtn, clip, qat)
        runs.append((spec, data, fp, rtn, clip, qat))
    _table().main(str(tmp_path))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")][1:]
    assert len(lines) == 2
    for spec, data, fp, rtn, clip, qat in runs:
        cells = next(ln for ln in lines if f"| {spec} |" in ln).strip("|").split("|")
        cells = [c.strip().strip("*") for c in cells]
        assert cells[:3] == [spec, data, "40"]
        assert [float(c) for c in cells[3:7]] == [round(v, 2) for v in (fp, rtn, clip, qat)]
        closed = 100 * (math.log(rtn) - math.log(qat)) / (math.log(rtn) - math.log(fp))
        assert float(cells[7].rstrip("%")) == round(closed, 1)
        assert float(cells[8].rstrip("%")) == round(100 * (qat / fp - 1), 1)
        assert cells[9:] == ["400", "540"]  # CPU seconds: QAT, all stages
