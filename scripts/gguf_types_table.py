"""scripts/gguf_types_table.py: prints README's table of llama.cpp's block types that lowbit trains
on (FORMATS.md 1.8) — one row per "blocks" row of lowbit's own format table (lowbit._constants,
read from lowbit._C) — with the block size and bytes per block checked against gguf-py's
GGML_QUANT_SIZES (an error if they differ), so the table cannot drift from either.
tests/test_gguf_types_table.py checks that README.md holds exactly this output.

    python scripts/gguf_types_table.py
"""
import sys


def rows():
    """(lowbit format, GGUF type, bits, block, sub-block, bytes, bits/weight, stored per block /
    sub-block) of each block type, in lowbit's table order."""
    import gguf

    from lowbit import _constants

    out = []
    for f in _constants.FORMATS.values():
        if f.storage != "blocks":
            continue
        gtype = gguf.GGMLQuantizationType[f.name.upper()]
        block, type_size = gguf.GGML_QUANT_SIZES[gtype]
        if (block, type_size) != (f.block, f.type_size):
            raise SystemExit(f"gguf_types_table: {f.name}: lowbit's format table says "
                             f"{f.block} weights in {f.type_size} bytes, gguf-py "
                             f"{block} in {type_size}")
        halves = "fp16 d" if len(f.half_at) == 1 else "fp16 d, m"
        if f.sub_block != f.block:  # k types: a super-block scale of the sub-block mins (dmin)
            halves = halves.replace(" m", " dmin")
            sub = f"{f.scale_bits}-bit scale" + ("" if f.symmetric else f" + {f.scale_bits}-bit min")
            stored = f"{halves}; per {f.sub_block} weights: {sub}"
        else:
            stored = halves
        bits = "/".join(str(b) for b in f.bits)
        out.append((f.name, gtype.name, bits, f.block, type_size,
                    8.0 * type_size / block, "symmetric" if f.symmetric else "with a min", stored))
    return out


def table():
    lines = ["| lowbit format | GGUF type | code bits | weights per block | bytes per block | "
             "bits per weight | grid | block holds |",
             "|---|---|---|---|---|---|---|---|"]
    for name, gname, bits, block, size, bpw, grid, stored in rows():
        lines.append(f"| `{name}` | {gname} | {bits} | {block} | {size} | {bpw:g} | {grid} | "
                     f"{stored} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table())
