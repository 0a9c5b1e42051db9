"""python/lowbit/sparse/cusparselt.py: the cuSPARSELt loader — finds libcusparseLt (the
nvidia-cusparselt wheel's copy, $LOWBIT_CUSPARSELT_LIB or the system's), points the C side at it
(it dlopens $LOWBIT_CUSPARSELT_LIB, then the system's) and says whether it loads."""
import ctypes
import importlib.util
import os

LIB_NAMES = ("libcusparseLt.so.0", "libcusparseLt.so")
ENV = "LOWBIT_CUSPARSELT_LIB"
_state = {}


def wheel_path():
    """Path of libcusparseLt.so.0 from the nvidia-cusparselt-cu13 (or -cu12) wheel, or None."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        for sub in ("cu13/lib", "cusparselt/lib", "cu12/lib"):
            for name in LIB_NAMES:
                p = os.path.join(root, sub, name)
                if os.path.exists(p):
                    return p
    return None


def cusparselt_available():
    """Whether libcusparseLt can be loaded (the wheel's copy, $LOWBIT_CUSPARSELT_LIB, or the
    system's). Only says the library is there; CUDA kernels need a lowbit CUDA build and a GPU."""
    if "ok" not in _state:
        if not os.environ.get(ENV):
            p = wheel_path()
            if p:
                os.environ[ENV] = p
        ok = False
        for c in [os.environ.get(ENV)] + list(LIB_NAMES):
            if not c:
                continue
            try:
                ctypes.CDLL(c)
                ok = True
                break
            except OSError:
                continue
        _state["ok"] = ok
    return _state["ok"]


def require():
    """Raises RuntimeError naming the library when cuSPARSELt cannot be loaded."""
    if not cusparselt_available():
        raise RuntimeError("lowbit: cuSPARSELt (libcusparseLt.so.0) is not installed: "
                           "pip install nvidia-cusparselt-cu13, or set "
                           f"{ENV} to the library's path")
