"""scripts/build_llamacpp.sh --dry-run: the ggml ISA flags it picks from a cpuinfo file (ON only
where the CPU lists the instructions, AMX always OFF), on seeded random flag sets and on the two
CPUs this project runs on (the Intel VM with AMX whose tiles raise SIGILL; AMD EPYC: AVX-512
without AVX-VNNI)."""
import os
import random
import subprocess

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "build_llamacpp.sh")

# ggml's CMake option -> the cpuinfo flags it needs (ggml-cpu/CMakeLists.txt's -m flags for it)
NEEDS = {"GGML_SSE42": ["sse4_2"], "GGML_AVX": ["avx"], "GGML_AVX2": ["avx2"],
         "GGML_FMA": ["fma"], "GGML_F16C": ["f16c"], "GGML_BMI2": ["bmi2"],
         "GGML_AVX512": ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"],
         "GGML_AVX512_VNNI": ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw",
                              "avx512_vnni"],
         "GGML_AVX512_BF16": ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw",
                              "avx512_bf16"],
         "GGML_AVX_VNNI": ["avx_vnni"]}
ALWAYS_OFF = ["GGML_AVX512_VBMI", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"]
AVX512_ONLY = ["GGML_AVX512", "GGML_AVX512_VNNI", "GGML_AVX512_BF16", "GGML_AVX_VNNI"]
ALL = sorted({f for v in NEEDS.values() for f in v} | {"amx_tile", "amx_int8", "amx_bf16",
                                                       "avx512vbmi", "fpu", "sse2"})

INTEL = ("fpu sse2 sse4_2 avx avx2 fma f16c bmi2 avx512f avx512dq avx512cd avx512bw avx512vl "
         "avx512vbmi avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8 avx512_fp16")
EPYC = ("fpu sse2 sse4_2 avx avx2 fma f16c bmi2 avx512f avx512dq avx512cd avx512bw avx512vl "
        "avx512vbmi avx512_vnni avx512_bf16")


def _dry_run(tmp_path, flags, *args):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: test CPU\nflags\t\t: {flags}\n\n"
                    f"processor\t: 1\nflags\t\t: {flags}\n")
    r = subprocess.run(["bash", SCRIPT, "--dry-run", *args], capture_output=True, text=True,
                       env={**os.environ, "LOWBIT_CPUINFO": str(info)}, timeout=60)
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stdout.splitlines() if "ISA flags:" in ln]
    assert len(line) == 1, r.stdout
    got = {}
    for tok in line[0].split("ISA flags:")[1].split():
        assert tok.startswith("-D") and "=" in tok, tok
        name, val = tok[2:].split("=")
        assert name not in got, f"{name} given twice"
        got[name] = val
    return got


def _expected(flags, avx2_only=False):
    have = set(flags.split())
    exp = {k: "ON" if all(f in have for f in v) else "OFF" for k, v in NEEDS.items()}
    for k in ALWAYS_OFF + (AVX512_ONLY if avx2_only else []):
        exp[k] = "OFF"
    return exp


@pytest.mark.parametrize("cpu", ["intel", "epyc"])
def test_known_cpus(tmp_path, cpu):
    flags = INTEL if cpu == "intel" else EPYC
    got = _dry_run(tmp_path, flags)
    assert got == _expected(flags)
    assert got["GGML_AMX_TILE"] == "OFF" and got["GGML_AVX512"] == "ON"
    assert got["GGML_AVX_VNNI"] == ("ON" if cpu == "intel" else "OFF")


def test_avx2_variant(tmp_path):
    got = _dry_run(tmp_path, INTEL, "--avx2")
    assert got == _expected(INTEL, avx2_only=True)


@pytest.mark.parametrize("seed", range(6))
def test_random_flag_sets(tmp_path, seed):
    rng = random.Random(seed)
    flags = " ".join(f for f in ALL if rng.random() < 0.7)
    assert _dry_run(tmp_path, flags) == _expected(flags)


def test_unreadable_cpuinfo(tmp_path):
    r = subprocess.run(["bash", SCRIPT, "--dry-run"], capture_output=True, text=True,
                       env={**os.environ, "LOWBIT_CPUINFO": str(tmp_path / "missing")})
    assert r.returncode != 0 and "cannot read" in r.stderr
