/* csrc/cpu/arch/x86/qlinear_blk_x86.h: the x86 body of the qlinear_blk kernels (W in GGUF
 * blocks, csrc/cpu/qlinear_blk_impl.h) on 256-bit vectors, included inside each variant's target
 * pragma with QLB(name) (its entry-point names) and QLB_DOT (0: vpmaddubsw + vpmaddwd, AVX2;
 * 1: vpdpbusd of AVX-VNNI; 2: vpdpbusd of AVX-512 VNNI on ymm):
 *   - qlb_q32: the 32 signed codes q of one 32-element chunk straight from the block bytes
 *     (shifts and masks per layout; the q of the header of qlinear_blk_impl.h);
 *   - float kernel: 4 W rows at a time dequantized exactly (S * q + C, one rounding each, as
 *     ggml's dequantize_row_*) into a float32 row buffer, then a 4 x 4 (x rows x W rows) tile of
 *     8-lane FMA dot products;
 *   - integer kernel: a W row's |q| and q decoded once into byte buffers, then for 4 activation
 *     rows at a time: the u8 x s8 dot of |q| with sign(x8, q) (llama.cpp's mul_sum_i8_pairs;
 *     exact, no vpmaddubsw saturation as |q|, |x8| <= 127; the asymmetric types' q >= 0 dot
 *     x8 directly) per 4 elements, converted and scaled
 *     by S_h * d per lane (lanes 0-3 are the first half of the chunk), summed in 8 float lanes;
 *     the C terms as one dot of C with d * sum(x8) per half at the end of the row.
 * Every worker is instantiated per layout (a constant inside), selected by a switch on the
 * format's layout. */

#define QLB_M8(v) _mm256_set1_epi8((char)(v))

LB_INLINE __m256i qlb_srl8(__m256i v, int n, int mask) {
    return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(n)), QLB_M8(mask));
}
LB_INLINE __m256i qlb_ld(const uint8_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
/* 16 bytes -> their 32 nibbles: codes l (low) then l + 16 (high), the _0/_1 blocks' qs */
LB_INLINE __m256i qlb_nib32(const uint8_t* qs) {
    const __m128i v = _mm_loadu_si128((const __m128i*)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), QLB_M8(15));
}
/* bit l of the little-endian uint32 at p -> byte l = 16 or 0 (q5_0 / q5_1's qh) */
LB_INLINE __m256i qlb_bit4_32(const uint8_t* p) {
    uint32_t x32;
    memcpy(&x32, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL,
                                           0x0101010101010101LL, 0x0000000000000000LL);
    __m256i by = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x32), shuf);
    by = _mm256_or_si256(by, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfeLL));
    return _mm256_and_si256(_mm256_cmpeq_epi8(by, _mm256_set1_epi64x(-1)), QLB_M8(16));
}

/* The signed codes of elements i0 .. i0 + 31 (i0 a multiple of 32) of the block at b. */
LB_INLINE __m256i qlb_q32(int L, const uint8_t* b, int i0) {
    const int h = i0 >> 7, k = (i0 >> 5) & 3, c = i0 >> 6, hi = (i0 >> 5) & 1;
    switch (L) {
    case LB_BLK_Q8_0: return qlb_ld(b + 2);
    case LB_BLK_Q4_0: return _mm256_sub_epi8(qlb_nib32(b + 2), QLB_M8(8));
    case LB_BLK_Q4_1: return qlb_nib32(b + 4);
    case LB_BLK_Q5_0:
        return _mm256_sub_epi8(_mm256_or_si256(qlb_nib32(b + 6), qlb_bit4_32(b + 2)), QLB_M8(16));
    case LB_BLK_Q5_1: return _mm256_or_si256(qlb_nib32(b + 8), qlb_bit4_32(b + 4));
    case LB_BLK_Q2_K: return qlb_srl8(qlb_ld(b + 16 + 32 * h), 2 * k, 3);
    case LB_BLK_Q3_K: { /* crumb + 4 * hmask bit, minus 4 */
        const __m256i lo = qlb_srl8(qlb_ld(b + 32 + 32 * h), 2 * k, 3);
        const __m256i hb = qlb_srl8(qlb_ld(b), i0 >> 5, 1);
        return _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hb, 2)), QLB_M8(4));
    }
    case LB_BLK_Q4_K: return qlb_srl8(qlb_ld(b + 16 + 32 * c), 4 * hi, 15);
    case LB_BLK_Q5_K: {
        const __m256i lo = qlb_srl8(qlb_ld(b + 48 + 32 * c), 4 * hi, 15);
        const __m256i hb = qlb_srl8(qlb_ld(b + 16), 2 * c + hi, 1);
        return _mm256_or_si256(lo, _mm256_slli_epi16(hb, 4));
    }
    case LB_BLK_Q6_K: {
        const int part = (i0 >> 5) & 3;
        const __m256i lo = qlb_srl8(qlb_ld(b + 64 * h + 32 * (part & 1)), (part & 2) ? 4 : 0, 15);
        const __m256i hb = qlb_srl8(qlb_ld(b + 128 + 32 * h), 2 * part, 3);
        return _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hb, 4)), QLB_M8(32));
    }
    default: return _mm256_setzero_si256();
    }
}

/* acc + the 4-element sums of ua (u8) x sx (s8) per int32 lane */
LB_INLINE __m256i qlb_dot(__m256i acc, __m256i ua, __m256i sx) {
#if QLB_DOT == 1
    return _mm256_dpbusd_avx_epi32(acc, ua, sx);
#elif QLB_DOT == 2
    return _mm256_dpbusd_epi32(acc, ua, sx);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ua, sx),
                                                   _mm256_set1_epi16(1)));
#endif
}

LB_INLINE float qlb_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Asks for W row n's bytes ahead of their decode (the rows are one sequential stream per
 * worker, but the hardware prefetchers left the decode waiting on memory; measured). */
LB_INLINE void qlb_prefetch_row(const qlb_ctx* c, int64_t n) {
    if (n >= c->N) return;
    const char* p = (const char*)(c->blocks + n * c->rb);
    for (int64_t o = 0; o < c->rb; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
}

/* W row n dequantized into w (K floats), exactly. S/C: scratch of 16 floats each. */
LB_INLINE void qlb_dequant_row(int L, const qlb_ctx* c, int64_t n, float* w) {
    const lb_fmt* f = c->f;
    const uint8_t* row = c->blocks + n * c->rb;
    const int64_t nb = c->K / f->block;
    float S[16], C[16];
    for (int64_t ib = 0; ib < nb; ++ib) {
        const uint8_t* b = row + ib * f->type_size;
        float* wb = w + ib * f->block;
        qlb_block_params(L, b, S, C);
        for (int i0 = 0; i0 < f->block; i0 += 32) {
            const __m256i q = qlb_q32(L, b, i0);
            const __m128i q0 = _mm256_castsi256_si128(q), q1 = _mm256_extracti128_si256(q, 1);
            const __m128i qq[4] = {q0, _mm_srli_si128(q0, 8), q1, _mm_srli_si128(q1, 8)};
            for (int g = 0; g < 4; ++g) {
                const int hh = (i0 >> 4) + (g >> 1);
                const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(qq[g]));
                _mm256_storeu_ps(wb + i0 + 8 * g,
                                 _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(S[hh])),
                                               _mm256_set1_ps(C[hh])));
            }
        }
    }
}

/* the R x 4 tile (x rows x W rows) of 8-lane FMA dot products over K, stored */
LB_INLINE void qlb_ftile(int R, const qlb_ctx* c, const float* w, int64_t m0, int64_t n0, int nr) {
    const int64_t K = c->K;
    const float* xr[4];
    __m256 acc[4][4];
    for (int i = 0; i < R; ++i) {
        xr[i] = c->xf + (m0 + i) * K;
        for (int r = 0; r < 4; ++r) acc[i][r] = _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < K; k += 8) {
        __m256 wv[4];
        for (int r = 0; r < 4; ++r) wv[r] = _mm256_load_ps(w + r * K + k);
        for (int i = 0; i < R; ++i) {
            const __m256 xv = _mm256_loadu_ps(xr[i] + k);
            for (int r = 0; r < 4; ++r) acc[i][r] = _mm256_fmadd_ps(xv, wv[r], acc[i][r]);
        }
    }
    for (int i = 0; i < R; ++i)
        for (int r = 0; r < nr; ++r) qlb_store(c, m0 + i, n0 + r, qlb_hsum(acc[i][r]));
}

/* float kernel: W rows [a, b), 4 at a time (a row past b repeats the last one, unstored);
 * x rows 4 at a time, the last 1 to 3 with a tile of their own size */
LB_INLINE void qlb_float_rows_L(int L, qlb_ctx* c, int64_t a, int64_t b) {
    const int64_t K = c->K, M = c->M;
    float* w = (float*)aligned_alloc(64, (size_t)(4 * K) * sizeof(float));
    if (!w) {
        c->oom = 1;
        return;
    }
    for (int64_t n0 = a; n0 < b; n0 += 4) {
        const int nr = b - n0 < 4 ? (int)(b - n0) : 4;
        for (int r = 0; r < 4; ++r) qlb_prefetch_row(c, n0 + 4 + r);
        for (int r = 0; r < nr; ++r) qlb_dequant_row(L, c, n0 + r, w + r * K);
        for (int r = nr; r < 4; ++r) memcpy(w + r * K, w + (nr - 1) * K, (size_t)K * sizeof(float));
        int64_t m0 = 0;
        for (; m0 + 4 <= M; m0 += 4) qlb_ftile(4, c, w, m0, n0, nr);
        switch (M - m0) {
        case 3: qlb_ftile(3, c, w, m0, n0, nr); break;
        case 2: qlb_ftile(2, c, w, m0, n0, nr); break;
        case 1: qlb_ftile(1, c, w, m0, n0, nr); break;
        default: break;
        }
    }
    free(w);
}

/* chunk kb of one W row (|q| at qa, q at qa + K, S per half) for R activation rows into acc */
LB_INLINE void qlb_ichunk(int L, int R, const qlb_ctx* c, const uint8_t* qa, const float* S,
                          const int8_t* const* xr, const float* const* dr, int64_t kb,
                          __m256* acc) {
    const int sgn = !QLB_HAS_C(L); /* the asymmetric types' q >= 0 */
    const __m256i ua = qlb_ld(qa + kb * 32);
    const __m256i sg = sgn ? qlb_ld(qa + c->K + kb * 32) : ua;
    const __m256 sv = _mm256_set_m128(_mm_set1_ps(S[2 * kb + 1]), _mm_set1_ps(S[2 * kb]));
    for (int i = 0; i < R; ++i) {
        __m256i sx = qlb_ld((const uint8_t*)xr[i] + kb * 32);
        if (sgn) sx = _mm256_sign_epi8(sx, sg);
        const __m256i d = qlb_dot(_mm256_setzero_si256(), ua, sx);
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d),
                                 _mm256_mul_ps(sv, _mm256_set1_ps(dr[i][kb])), acc[i]);
    }
}

/* res[v0 .. v0+R) of one W row (its |q| in qa[0, K), q in qa[K, 2K), S / C per half) for R
 * virtual activation rows. Two accumulator chains per row (even / odd chunks): at few rows
 * the FMA latency of one chain, not its throughput, would bound the loop. */
LB_INLINE void qlb_itile(int L, int R, const qlb_ctx* c, const uint8_t* qa, const float* S,
                         const float* C, int64_t v0, float* res) {
    const int64_t K = c->K, KB = c->KB;
    const int8_t* xr[4];
    const float* dr[4];
    __m256 acc[2][4];
    int64_t kb = 0;
    for (int i = 0; i < R; ++i) {
        xr[i] = c->x8 + (v0 + i) * K;
        dr[i] = c->xd + (v0 + i) * KB;
        acc[0][i] = acc[1][i] = _mm256_setzero_ps();
    }
    for (; kb + 2 <= KB; kb += 2) {
        qlb_ichunk(L, R, c, qa, S, xr, dr, kb, acc[0]);
        qlb_ichunk(L, R, c, qa, S, xr, dr, kb + 1, acc[1]);
    }
    if (kb < KB) qlb_ichunk(L, R, c, qa, S, xr, dr, kb, acc[0]);
    for (int i = 0; i < R; ++i) {
        float r = qlb_hsum(_mm256_add_ps(acc[0][i], acc[1][i]));
        if (QLB_HAS_C(L)) {
            const float* xs = c->xsd + (v0 + i) * 2 * KB;
            __m256 cs = _mm256_setzero_ps();
            int64_t j = 0;
            float t = 0.0f;
            for (; j + 8 <= 2 * KB; j += 8)
                cs = _mm256_fmadd_ps(_mm256_loadu_ps(C + j), _mm256_loadu_ps(xs + j), cs);
            for (; j < 2 * KB; ++j) t += C[j] * xs[j]; /* K = 32 .. 96 */
            r += qlb_hsum(cs) + t;
        }
        res[v0 + i] = r;
    }
}

/* integer kernel: W rows [a, b), one at a time; activation rows 4 at a time */
LB_INLINE void qlb_int_rows_L(int L, qlb_ctx* c, int64_t a, int64_t b) {
    const lb_fmt* f = c->f;
    const int64_t K = c->K, KB = c->KB, V = c->V, M = c->M, nb = K / f->block;
    const int cpb = f->block / 32;
    uint8_t* qa = (uint8_t*)malloc((size_t)(2 * K));            /* |q|, then q */
    float* SC = (float*)malloc((size_t)(4 * KB) * sizeof(float)); /* S per half, then C */
    float* res = (float*)malloc((size_t)V * sizeof(float));
    if (!qa || !SC || !res) {
        free(qa); free(SC); free(res);
        c->oom = 1;
        return;
    }
    int8_t* qs = (int8_t*)(qa + K);
    float *S = SC, *C = SC + 2 * KB;
    for (int64_t n = a; n < b; ++n) {
        const uint8_t* row = c->blocks + n * c->rb;
        qlb_prefetch_row(c, n + 2);
        for (int64_t ib = 0; ib < nb; ++ib) {
            const uint8_t* blk = row + ib * f->type_size;
            qlb_block_params(L, blk, S + ib * 2 * cpb, C + ib * 2 * cpb);
            for (int j = 0; j < cpb; ++j) {
                const __m256i q = qlb_q32(L, blk, 32 * j);
                const int64_t k = (ib * cpb + j) * 32;
                _mm256_storeu_si256((__m256i*)(qa + k), QLB_HAS_C(L) ? q : _mm256_abs_epi8(q));
                if (!QLB_HAS_C(L)) _mm256_storeu_si256((__m256i*)(qs + k), q);
            }
        }
        int64_t v0 = 0;
        for (; v0 + 4 <= V; v0 += 4) qlb_itile(L, 4, c, qa, S, C, v0, res);
        switch (V - v0) {
        case 3: qlb_itile(L, 3, c, qa, S, C, v0, res); break;
        case 2: qlb_itile(L, 2, c, qa, S, C, v0, res); break;
        case 1: qlb_itile(L, 1, c, qa, S, C, v0, res); break;
        default: break;
        }
        for (int64_t m = 0; m < M; ++m)
            qlb_store(c, m, n, c->passes == 2 ? res[m] + res[M + m] : res[m]);
    }
    free(qa); free(SC); free(res);
}

#define QLB_CASE_F(L) case L: qlb_float_rows_L(L, c, a, b); break;
#define QLB_CASE_I(L) case L: qlb_int_rows_L(L, c, a, b); break;
void QLB(float_rows)(int64_t a, int64_t b, void* ctx) {
    qlb_ctx* c = (qlb_ctx*)ctx;
    switch (c->f->layout) { QLB_LAYOUTS(QLB_CASE_F) default: break; }
}
void QLB(int_rows)(int64_t a, int64_t b, void* ctx) {
    qlb_ctx* c = (qlb_ctx*)ctx;
    switch (c->f->layout) { QLB_LAYOUTS(QLB_CASE_I) default: break; }
}
#undef QLB_CASE_F
#undef QLB_CASE_I
