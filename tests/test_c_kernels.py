"""The CPU kernels without Python or torch: compiles tests/c/test_kernels.c with csrc/cpu (every
kernel source, so none of them may need a torch header) and csrc/formats.h / formats.c, runs it, and does
the same with the x86 variants switched off (-DLB_NO_X86), as on a non-x86 machine, where the
scalar twins must stand alone. -O0 keeps the compile short; the optimised kernels are what the
rest of the suite tests through the extension."""
import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CC = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


@pytest.mark.skipif(CC is None, reason="no C compiler")
@pytest.mark.parametrize("x86", [True, False], ids=["x86-variants", "scalar-only"])
def test_kernels_in_plain_c(tmp_path, x86):
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "**", "*.c"), recursive=True))
    sources.append(os.path.join(ROOT, "csrc", "formats.c"))  # the format table
    exe = str(tmp_path / "test_kernels")
    cmd = [CC, "-std=c11", "-O0", "-ffp-contract=off", "-fno-math-errno", "-Wall",
           "-Wno-unused-function", "-I", os.path.join(ROOT, "csrc"),
           os.path.join(ROOT, "tests", "c", "test_kernels.c"), *sources, "-lm", "-o", exe]
    if not x86:
        cmd.insert(1, "-DLB_NO_X86")
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    r = subprocess.run([exe], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout[-4000:] + r.stderr[-2000:]
    assert ("x86 variants built" in r.stdout) == (x86 and os.uname().machine in ("x86_64", "i686"))


def _includes(path):
    with open(path) as f:
        return re.findall(r'^\s*#\s*include\s+"([^"]+)"', f.read(), re.M)


def test_includes_point_one_way():
    """module.c -> csrc/ops (glue, the only C that sees lb_torch.h) -> csrc/cpu kernels and cuda/
    launchers -> csrc/formats.h: module.c includes no kernel header, a kernel file no glue or
    torch header, a launcher no CPU or glue header, and a family's glue only its own kernels'
    headers (its stem's, or a kernel stem of its own under it: qlinear -> qlinear_blk)."""
    glue = {"lb_torch.h", "lb_ops.h", "lb_check.h"}
    for path in glob.glob(os.path.join(ROOT, "csrc", "cpu", "**", "*.[ch]"), recursive=True):
        for inc in _includes(path):
            name = os.path.basename(inc)
            assert name not in glue and "ops/" not in inc, f"{path} includes {inc}"
    for path in glob.glob(os.path.join(ROOT, "cuda", "*.cu*")):
        for inc in _includes(path):
            assert os.path.basename(inc) not in glue and "ops/" not in inc and "cpu/" not in inc, \
                f"{path} includes {inc}"
    for inc in _includes(os.path.join(ROOT, "csrc", "module.c")):  # module.c -> csrc/ops only
        assert "cpu/" not in inc and "cuda/" not in inc and "ops/" not in inc, f"module.c includes {inc}"
    shared = {"lb_cpu.h", "lb_common.cuh"}  # the runtime hook, the CUDA helpers
    for path in glob.glob(os.path.join(ROOT, "csrc", "ops", "*.c")):
        stem = os.path.splitext(os.path.basename(path))[0]
        for inc in _includes(path):
            if ("cpu/" in inc or "cuda/" in inc) and os.path.basename(inc) not in shared:
                own = os.path.splitext(os.path.basename(inc))[0]
                assert own == stem or own.startswith(stem + "_"), f"{path} includes {inc}"


AARCH64_CC = shutil.which("aarch64-linux-gnu-gcc")


@pytest.mark.slow
@pytest.mark.skipif(AARCH64_CC is None, reason="no aarch64 cross compiler (apt-get install "
                    "gcc-aarch64-linux-gnu)")
def test_kernels_cross_compile_aarch64(tmp_path):
    """A non-x86 build: the format table, every CPU kernel file (the x86 arch files compile to
    nothing) and the plain C test program compile and link for aarch64 with warnings as errors,
    so the scalar twins, the dispatch table's scalar row and the format helpers need nothing
    x86. (Not run: there is no aarch64 machine or emulator here.)"""
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "**", "*.c"), recursive=True))
    sources.append(os.path.join(ROOT, "csrc", "formats.c"))
    exe = str(tmp_path / "test_kernels_aarch64")
    cmd = [AARCH64_CC, "-std=c11", "-O1", "-ffp-contract=off", "-fno-math-errno", "-Wall",
           "-Wno-unused-function", "-Werror", "-I", os.path.join(ROOT, "csrc"),
           os.path.join(ROOT, "tests", "c", "test_kernels.c"), *sources, "-lm", "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    with open(exe, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64


@pytest.mark.slow
@pytest.mark.skipif(CC is None or os.uname().machine != "x86_64", reason="x86-64 gcc needed")
def test_gemv_vnni_proto_links(tmp_path):
    """benchmarks/experiments/gemv_vnni_proto.c (RESULTS.md's VNNI prototype) still builds
    against the kernels' current interfaces (its build line, at -O0)."""
    exe = str(tmp_path / "gemv_vnni")
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.c")) +
                     glob.glob(os.path.join(ROOT, "csrc", "cpu", "arch", "x86", "*.c")))
    r = subprocess.run([CC, "-std=c11", "-O0", "-ffp-contract=off", "-I", os.path.join(ROOT, "csrc"),
                        os.path.join(ROOT, "benchmarks", "experiments", "gemv_vnni_proto.c"),
                        os.path.join(ROOT, "csrc", "formats.c"), *sources, "-lm", "-o", exe],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
