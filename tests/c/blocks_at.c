/* tests/c/blocks_at.c: reads stored blocks of one block type element by element with
 * formats_ggml.h's lb_blk_value_at (what the CUDA linear kernels of cuda/qlinear.cu decode) and
 * with lb_blk_dequantize, for tests/test_fake_quant_ggml.py (which compares both with gguf-py).
 * Usage: blocks_at FMT_CODE BITS SYMMETRIC NBLOCKS IN OUT; IN holds NBLOCKS * type_size bytes,
 * OUT gets 2 * NBLOCKS * block float32 (value_at's, then dequantize's). Exit 0, or 1 on error. */
#include <stdio.h>
#include <stdlib.h>

#include "formats.h"

int main(int argc, char** argv) {
    lb_fmt f;
    if (argc != 7 || lb_fmt_init(&f, atoll(argv[1]), atoll(argv[2]), atoi(argv[3])) ||
        f.storage != LB_STORE_BLOCKS)
        return 1;
    const long nb = atol(argv[4]);
    uint8_t* in = malloc((size_t)nb * f.type_size);
    float* out = malloc(2 * (size_t)nb * f.block * sizeof(float));
    FILE* fi = fopen(argv[5], "rb");
    if (!in || !out || !fi || fread(in, f.type_size, nb, fi) != (size_t)nb) return 1;
    fclose(fi);
    for (long b = 0; b < nb; ++b) {
        const uint8_t* blk = in + b * f.type_size;
        for (int i = 0; i < f.block; ++i) out[b * f.block + i] = lb_blk_value_at(&f, blk, i);
        lb_blk_dequantize(&f, blk, out + (nb + b) * f.block);
    }
    FILE* fo = fopen(argv[6], "wb");
    if (!fo || fwrite(out, sizeof(float), 2 * nb * f.block, fo) != (size_t)(2 * nb * f.block))
        return 1;
    fclose(fo);
    free(in);
    free(out);
    return 0;
}
