"""README's table of llama.cpp block types (scripts/gguf_types_table.py): README.md holds exactly the
script's output, its sizes are gguf-py's own (GGML_QUANT_SIZES), it lists the ten types of
FORMATS.md 1.8, and the script refuses a format table that disagrees with gguf-py."""
import importlib.util
import os

import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("lowbit")

ROOT = os.path.join(os.path.dirname(__file__), "..")
TEN = {"Q8_0", "Q4_0", "Q5_0", "Q4_1", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


def _script():
    spec = importlib.util.spec_from_file_location(
        "gguf_types_table", os.path.join(ROOT, "scripts", "gguf_types_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_holds_the_table():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert _script().table() in readme, "README.md: rerun scripts/gguf_types_table.py"


def test_rows_are_gguf_py_sizes():
    rows = _script().rows()
    assert {r[1] for r in rows} == TEN and len(rows) == len(TEN)
    for name, gname, _bits, block, size, bpw, _grid, _stored in rows:
        ref_block, ref_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[gname]]
        assert (block, size) == (ref_block, ref_size), name
        assert bpw == 8 * ref_size / ref_block, name


def test_disagreement_is_an_error(monkeypatch):
    mod = _script()
    q4k = gguf.GGMLQuantizationType.Q4_K
    sizes = dict(gguf.GGML_QUANT_SIZES)
    sizes[q4k] = (256, sizes[q4k][1] + 2)
    monkeypatch.setattr(gguf, "GGML_QUANT_SIZES", sizes)
    with pytest.raises(SystemExit, match="q4_k"):
        mod.rows()
