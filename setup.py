# setup.py: builds lowbit._C from C11 sources (and CUDA sources with nvcc when enabled) with plain
# setuptools, every translation unit compiled concurrently and only when its source, headers or
# command changed. torch is not needed to build: its stable C ABI is resolved at import time.
#   LOWBIT_CUDA=auto|0|1     build the CUDA kernels (auto: when nvcc is found)
#   LOWBIT_CUDA_ARCHS="80;90" SM architectures (PTX of the last one is embedded too)
#   LOWBIT_SANITIZE=1        build with -fsanitize=address,undefined (see scripts/sanitize.sh)
#   LOWBIT_DEBUG=1           -O0 -g
#   LOWBIT_JOBS=N            concurrent compile jobs (default: the CPU count)
import concurrent.futures
import copy
import glob
import json
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
# Release builds drop the debug info Python's own CFLAGS ask for (-g): it costs a third of the
# compile time of the kernel files; LOWBIT_DEBUG=1 (and the sanitizer build) keep it.
C_FLAGS += ["-O0", "-g"] if DEBUG else ["-O3", "-g0"]
LINK = []
if SANITIZE:
    C_FLAGS += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    LINK += ["-fsanitize=address,undefined"]

sources = sorted(glob.glob("csrc/*.c") + glob.glob("csrc/ops/*.c") + glob.glob("csrc/cpu/*.c") +
                 glob.glob("csrc/cpu/arch/*/*.c"))
headers = sorted(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("cuda/*.cuh"))
macros = []
libraries = []
library_dirs = []
cu_sources = sorted(glob.glob("cuda/*.cu"))
if NVCC:
    archs = _archs()
    macros += [("LOWBIT_WITH_CUDA", "1"), ("LOWBIT_CUDA_ARCHS", '"' + ";".join(archs) + '"')]
    library_dirs.append(_cuda_libdir(CUDA_HOME))
    libraries += ["cudart_static", "rt", "pthread", "dl", "stdc++"]


def _read_depfile(path):
    """The prerequisites listed in a make-style depfile (gcc -MMD / nvcc -MD), or None."""
    try:
        with open(path) as f:
            text = f.read().replace("\\\n", " ")
    except OSError:
        return None
    _, _, deps = text.partition(": ")
    return deps.split()


def _done(obj, signature):
    """Records the command an object was built with (written only once it built)."""
    with open(obj + ".cmd", "w") as f:
        f.write(signature)


def _up_to_date(obj, src, signature):
    """The object exists, was built with the same command, and is newer than its source and
    every header its depfile lists (so a changed header always rebuilds what includes it)."""
    try:
        with open(obj + ".cmd") as f:
            if f.read() != signature:
                return False
        t = os.path.getmtime(obj)
    except OSError:
        return False
    deps = _read_depfile(obj + ".d")
    if deps is None:
        return False
    try:
        return all(os.path.getmtime(d) <= t for d in [src] + deps)
    except OSError:  # a header was removed or renamed
        return False


class BuildExt(build_ext):
    """Compiles every C source and cuda/*.cu file concurrently (one job per CPU by default,
    LOWBIT_JOBS or build_ext -j to change it), skipping objects that are up to date with their
    sources, headers and command line, then links lowbit._C."""

    def _jobs(self):
        if os.environ.get("LOWBIT_JOBS"):
            return max(1, int(os.environ["LOWBIT_JOBS"]))
        if self.parallel and self.parallel is not True:
            return max(1, int(self.parallel))
        return os.cpu_count() or 1

    def _c_job(self, ext, src):
        obj = self.compiler.object_filenames([src], output_dir=self.build_temp)[0]
        extra = list(ext.extra_compile_args) + ["-MMD", "-MF", obj + ".d"]
        signature = json.dumps([self.compiler.compiler_so, ext.define_macros, ext.include_dirs,
                                extra, self.debug])

        def run():
            self.compiler.compile([src], output_dir=self.build_temp, macros=ext.define_macros,
                                  include_dirs=ext.include_dirs, debug=self.debug,
                                  extra_postargs=extra)
            _done(obj, signature)
        return obj, src, signature, run

    def _cuda_job(self, src):
        obj = os.path.join(self.build_temp, "cuda", os.path.basename(src) + ".o")
        gencode = []
        for a in archs:
            gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
        cmd = [NVCC, "-std=c++17", "-O0" if DEBUG else "-O3", "--fmad=false",
               "-Xcompiler", "-fPIC,-fvisibility=hidden", "-Icsrc", "-DLOWBIT_WITH_CUDA=1",
               *gencode, "-c", src, "-o", obj, "-MD", "-MF", obj + ".d"]
        signature = json.dumps(cmd)

        def run():
            print(" ".join(cmd), flush=True)
            subprocess.check_call(cmd, cwd=ROOT)
            _done(obj, signature)
        return obj, src, signature, run

    def build_extension(self, ext):
        jobs = [self._cuda_job(s) for s in (cu_sources if NVCC else [])]
        jobs += [self._c_job(ext, s) for s in ext.sources]
        # longest first (CUDA, then the biggest C files), so no long job starts last
        jobs.sort(key=lambda j: (not j[0].endswith(".cu.o"), -os.path.getsize(j[1])))
        todo = [j for j in jobs if self.force or not _up_to_date(j[0], j[1], j[2])]
        for obj, _, _, _ in todo:
            os.makedirs(os.path.dirname(obj), exist_ok=True)
            for stale in (obj, obj + ".cmd"):  # a failed build must not leave a "fresh" object
                if os.path.exists(stale):
                    os.remove(stale)
        if todo:
            with concurrent.futures.ThreadPoolExecutor(min(self._jobs(), len(todo))) as pool:
                for _ in pool.map(lambda j: j[3](), todo):  # re-raises the first failure
                    pass
        objects = [j[0] for j in jobs]
        linked = copy.copy(ext)
        linked.sources = []
        linked.extra_objects = objects + list(ext.extra_objects or [])
        linked.depends = objects  # relink when any object is newer than the module
        super().build_extension(linked)


ext = Extension(
    "lowbit._C",
    sources=sources,
    include_dirs=["csrc"],
    define_macros=macros,
    extra_compile_args=C_FLAGS,
    extra_link_args=LINK,
    libraries=libraries,
    library_dirs=library_dirs,
    depends=headers + cu_sources,
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
