# setup.py: builds lowbit._C from C11 sources (and CUDA sources with nvcc when enabled) with plain
# setuptools. torch is not needed to build: its stable C ABI is resolved at import time.
#   LOWBIT_CUDA=auto|0|1     build the CUDA kernels (auto: when nvcc is found)
#   LOWBIT_CUDA_ARCHS="80;90" SM architectures (PTX of the last one is embedded too)
#   LOWBIT_SANITIZE=1        build with -fsanitize=address,undefined (see scripts/sanitize.sh)
#   LOWBIT_DEBUG=1           -O0 -g
import glob
import os
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda():
    """(nvcc path, CUDA home) or (None, None)."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    homes += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in homes:
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            cand = os.path.join(home, "bin", "nvcc")
            if os.path.exists(cand):
                return cand, home
    return None, None


def _cuda_libdir(home):
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                os.path.join("targets", "sbsa-linux", "lib")):
        d = os.path.join(home, sub)
        if os.path.exists(os.path.join(d, "libcudart_static.a")):
            return d
    raise RuntimeError(f"lowbit: libcudart_static.a not found under {home}")


def _want_cuda():
    mode = os.environ.get("LOWBIT_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise RuntimeError(f"LOWBIT_CUDA must be auto, 0 or 1, got {mode!r}")
    nvcc, home = _find_cuda()
    if mode == "1" and not nvcc:
        raise RuntimeError("LOWBIT_CUDA=1 but nvcc / the CUDA toolkit was not found (set CUDA_HOME)")
    if mode == "0":
        return None, None
    return nvcc, home


def _archs():
    raw = os.environ.get("LOWBIT_CUDA_ARCHS", "80;90")
    archs = [a.strip().replace("sm_", "").replace(".", "") for a in raw.replace(",", ";").split(";")]
    archs = [a for a in archs if a]
    if not archs:
        raise RuntimeError("LOWBIT_CUDA_ARCHS is empty")
    return archs


SANITIZE = os.environ.get("LOWBIT_SANITIZE", "0") == "1"
DEBUG = os.environ.get("LOWBIT_DEBUG", "0") == "1" or SANITIZE
NVCC, CUDA_HOME = _want_cuda()

C_FLAGS = [
    "-std=c11",
    "-fexceptions",          # aoti_torch_check throws a C++ exception through our frames
    "-ffp-contract=off",     # no FMA contraction: every ISA path and CUDA round identically
    "-fno-math-errno",
    "-fvisibility=hidden",
    "-Wall",
    "-Wno-unused-function",
]
C_FLAGS += ["-O0", "-g"] if DEBUG else ["-O3"]
LINK = []
if SANITIZE:
    C_FLAGS += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    LINK += ["-fsanitize=address,undefined"]

sources = sorted(glob.glob("csrc/*.c") + glob.glob("csrc/ops/*.c") + glob.glob("csrc/cpu/*.c"))
macros = []
extra_objects = []
libraries = []
library_dirs = []
cu_sources = sorted(glob.glob("cuda/*.cu"))
if NVCC:
    archs = _archs()
    macros += [("LOWBIT_WITH_CUDA", "1"), ("LOWBIT_CUDA_ARCHS", '"' + ";".join(archs) + '"')]
    library_dirs.append(_cuda_libdir(CUDA_HOME))
    libraries += ["cudart_static", "rt", "pthread", "dl", "stdc++"]


class BuildExt(build_ext):
    """Compiles cuda/*.cu with nvcc into objects linked into lowbit._C."""

    def build_extension(self, ext):
        if NVCC and cu_sources:
            out_dir = os.path.join(self.build_temp, "cuda")
            os.makedirs(out_dir, exist_ok=True)
            gencode = []
            for a in archs:
                gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
            gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
            objs = []
            for src in cu_sources:
                obj = os.path.join(out_dir, os.path.basename(src) + ".o")
                cmd = [NVCC, "-std=c++17", "-O0" if DEBUG else "-O3", "--fmad=false",
                       "-Xcompiler", "-fPIC,-fvisibility=hidden", "-Icsrc",
                       "-DLOWBIT_WITH_CUDA=1", *gencode, "-c", src, "-o", obj]
                if not self.force and os.path.exists(obj) and \
                        os.path.getmtime(obj) > max(os.path.getmtime(p) for p in
                                                    [src] + glob.glob("csrc/*.h") + glob.glob("csrc/ops/*.h")):
                    objs.append(obj)
                    continue
                print(" ".join(cmd), flush=True)
                subprocess.check_call(cmd, cwd=ROOT)
                objs.append(obj)
            ext.extra_objects = list(ext.extra_objects or []) + objs
        super().build_extension(ext)


ext = Extension(
    "lowbit._C",
    sources=sources,
    include_dirs=["csrc"],
    define_macros=macros,
    extra_compile_args=C_FLAGS,
    extra_link_args=LINK,
    libraries=libraries,
    library_dirs=library_dirs,
    extra_objects=extra_objects,
    depends=glob.glob("csrc/*.h") + glob.glob("csrc/ops/*.h") + glob.glob("csrc/cpu/*.h"),
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
