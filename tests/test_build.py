"""The import-time bridge: clear ImportErrors when torch is missing, too old, or lacks a
stable-ABI symbol; the ops are registered in torch.ops.lowbit; build facts."""
import subprocess
import sys
import textwrap

import pytest
import torch

lowbit = pytest.importorskip("lowbit")


def _run(code, tmp_path=None):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=tmp_path)


def test_import_without_torch_names_torch():
    r = _run("""
        import sys
        sys.modules["torch"] = None   # makes `import torch` fail
        try:
            import lowbit
        except ImportError as e:
            print("IMPORTERROR", e)
    """)
    assert "IMPORTERROR" in r.stdout and "torch is not installed" in r.stdout, r.stdout + r.stderr


def test_import_with_old_torch_names_version(tmp_path):
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '2.10.0'\n")
    r = _run("""
        try:
            import lowbit
        except ImportError as e:
            print("IMPORTERROR", e)
    """, tmp_path)
    assert "IMPORTERROR" in r.stdout and "2.11" in r.stdout and "2.10.0" in r.stdout, \
        r.stdout + r.stderr


def test_missing_symbol_names_it():
    r = _run("""
        import ctypes.util, torch
        import importlib.util, os
        spec = importlib.util.find_spec("lowbit")
        so = [f for f in os.listdir(spec.submodule_search_locations[0]) if f.startswith("_C")][0]
        path = os.path.join(spec.submodule_search_locations[0], so)
        s = importlib.util.spec_from_file_location("lowbit._C", path)
        m = importlib.util.module_from_spec(s); s.loader.exec_module(m)
        libm = ctypes.util.find_library("m")
        ctypes.CDLL(libm)
        try:
            m.load(libm, None, torch.__version__)   # a loaded library without torch's symbols
        except ImportError as e:
            print("IMPORTERROR", e)
    """)
    assert "IMPORTERROR" in r.stdout and "aoti_torch_abi_version" in r.stdout, r.stdout + r.stderr


def test_ops_registered():
    for name in ("fake_quant", "fake_quant_backward", "quantize", "dequantize", "clip_search"):
        assert hasattr(torch.ops.lowbit, name), name


def test_build_info_and_isa():
    info = lowbit.build_info()
    assert info["version"] == lowbit.__version__
    assert info["torch_version"] == torch.__version__
    assert info["cpu_isa"] in lowbit.available_cpu_isas()
    assert "scalar" in lowbit.available_cpu_isas()
    with pytest.raises(ValueError, match="isa"):
        lowbit.set_cpu_isa("sse9")
