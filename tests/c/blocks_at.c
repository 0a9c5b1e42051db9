/* tests/c/blocks_at.c: reads stored blocks of one block type the way the CUDA linear kernels of
 * cuda/qlinear.cu do, with formats_ggml.h's element decoder (lb_blk_value_at) and its int8-mode
 * pieces (lb_blk_codes32 + lb_blk_dot32), and with lb_blk_dequantize, for
 * tests/test_qlinear_ggml_cuda.py (which compares them with gguf-py).
 * Usage: blocks_at FMT_CODE BITS SYMMETRIC NBLOCKS IN X8 OUT. IN holds NBLOCKS * type_size
 * bytes, X8 NBLOCKS * block int8; OUT gets float32: value_at of every element, then
 * lb_blk_dequantize's, then lb_blk_dot32 of each 32-block with X8. Exit 0, or 1 on error. */
#include <stdio.h>
#include <stdlib.h>

#include "formats.h"

static void* slurp(const char* path, size_t n) {
    void* p = malloc(n ? n : 1);
    FILE* fi = fopen(path, "rb");
    if (!p || !fi || fread(p, 1, n, fi) != n) return NULL;
    fclose(fi);
    return p;
}

int main(int argc, char** argv) {
    lb_fmt f;
    if (argc != 8 || lb_fmt_init(&f, atoll(argv[1]), atoll(argv[2]), atoi(argv[3])) ||
        f.storage != LB_STORE_BLOCKS)
        return 1;
    const long nb = atol(argv[4]), ne = nb * f.block, nout = 2 * ne + ne / 32;
    const uint8_t* in = slurp(argv[5], (size_t)nb * f.type_size);
    const int8_t* x8 = slurp(argv[6], (size_t)ne);
    float* out = malloc((size_t)nout * sizeof(float));
    if (!in || !x8 || !out) return 1;
    for (long b = 0; b < nb; ++b) {
        const uint8_t* blk = in + b * f.type_size;
        for (int i = 0; i < f.block; ++i) out[b * f.block + i] = lb_blk_value_at(&f, blk, i);
        lb_blk_dequantize(&f, blk, out + ne + b * f.block);
        for (int i0 = 0; i0 < f.block; i0 += 32) {
            int q[32];
            float S[2], C[2];
            const int nh = lb_blk_codes32(&f, blk, i0, q, S, C);
            out[2 * ne + (b * f.block + i0) / 32] = lb_blk_dot32(q, S, C, nh, x8 + b * f.block + i0);
        }
    }
    FILE* fo = fopen(argv[7], "wb");
    if (!fo || fwrite(out, sizeof(float), (size_t)nout, fo) != (size_t)nout) return 1;
    fclose(fo);
    return 0;
}
