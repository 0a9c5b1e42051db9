/* csrc/formats_ggml.h: FORMATS.md 1.8 as C: the block math of llama.cpp's block types (the
 * LB_KIND_G_* kinds of the LB_STORE_BLOCKS rows): fp16(v), one block's statistics, parameters,
 * codes, values and ste="bitdistiller" gradient, and the GGUF byte layout of one block
 * (ggml-common.h's block_q*_0/1 and block_q*_K; packed by lb_blk_pack, read by lb_blk_unpack,
 * which dequantizes exactly as ggml-quants.c's dequantize_row_* does). Included by formats.h;
 * every function is LB_HD, so the CPU kernels and the CUDA kernels run the same code.
 *
 * A block is f->block values (32 or 256) of f->nsub sub-blocks of f->sub_block values (the
 * 32-blocks are one sub-block). Codes are the q of 1.8 as written there (q8_0 in [-127, 127];
 * q4_0 / q5_0 the offset code in [0, 2^b - 1], value q - zero; q3_k in [-4, 3]; q6_k in
 * [-32, 31]; the others in [0, 2^b - 1]); lb_blk_pack adds the storage offsets. Every product
 * and sum is one float32 operation (the build has no FMA contraction), in the order ggml's
 * dequantize_row_* writes it, so Q(x) = lb_blk_value(lb_blk_code(x)) is bit for bit what ggml
 * (and gguf-py's gguf.quants.dequantize) reads back from the packed block. */
#ifndef LOWBIT_FORMATS_GGML_H
#define LOWBIT_FORMATS_GGML_H

/* fp16(v) of 1.8: to nearest even float16 (subnormals kept, a value that rounds to 0 is 0),
 * clamped to +-65504 (an inf too); NaN passes. Done on the bits, as lb_round_scale. */
LB_HD float lb_fp16(float v) {
    uint32_t u = lb_float_bits(v), sign = u & 0x80000000u, a = u ^ sign;
    if (a > 0x7f800000u) return v;
    if (a >= 0x38800000u) {
        a = a >= 0x7f800000u ? 0x477fe000u : (a + 0xfffu + ((a >> 13) & 1u)) & 0xffffe000u;
        if (a > 0x477fe000u) a = 0x477fe000u; /* past 65504: 65504 */
    } else {
        /* subnormals: multiples of 2^-24 (exact scaling, rintf to nearest even) */
        a = lb_float_bits(rintf(lb_bits_float(a) * 16777216.0f) * 5.9604644775390625e-08f);
    }
    return lb_bits_float(a | sign);
}

/* The float16 bits of a value exact in float16 (an lb_fp16 result), and back. */
LB_HD uint16_t lb_f16_bits(float v) {
    const uint32_t u = lb_float_bits(v), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a >= 0x38800000u)
        return (uint16_t)(sign | ((((a >> 23) - 112u) << 10) & 0x7c00u) | ((a >> 13) & 0x3ffu));
    return (uint16_t)(sign | (uint32_t)(lb_bits_float(a) * 16777216.0f));
}
LB_HD float lb_f16_value(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 0x3ffu;
    if (e == 0) return lb_bits_float(sign | lb_float_bits((float)m * 5.9604644775390625e-08f));
    if (e == 31) return lb_bits_float(sign | 0x7f800000u | (m << 13));
    return lb_bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

/* Statistics of each sub-block of one block. */
typedef struct {
    float mx[LB_NSUB_MAX], mn[LB_NSUB_MAX]; /* max, min */
    float amax[LB_NSUB_MAX];                /* max |x| */
    float asg[LB_NSUB_MAX];                 /* amax-signed: the first x of largest |x| */
    int bad;                                /* NaN or Inf in the block */
} lb_bstats;

/* Parameters of one block as dequantization uses them. S[j] / M[j]: the scale and the min of
 * sub-block j's codes: G_ASYMK x = S*q - M; G_SYMK x = S*q; the 32-blocks (one sub-block)
 * S[0] = d and, for G_ASYM (x = d*q + m), M[0] = m. */
typedef struct {
    float d, dmin;                        /* block scales (G_ASYM: dmin holds m) */
    float S[LB_NSUB_MAX], M[LB_NSUB_MAX];
    int sc[LB_NSUB_MAX], mc[LB_NSUB_MAX]; /* k kinds: sub-block scale / min codes */
} lb_bparams;

LB_HD void lb_blk_stats(const lb_fmt* f, const float* x, lb_bstats* st) {
    const int sub = f->sub_block;
    st->bad = 0;
    for (int j = 0; j < f->nsub; ++j) {
        float mx = -INFINITY, mn = INFINITY, am = -1.0f, sg = 0.0f;
        for (int i = j * sub; i < (j + 1) * sub; ++i) {
            const float v = x[i], a = fabsf(v);
            mx = v > mx ? v : mx;
            mn = v < mn ? v : mn;
            if (a > am) { /* strictly larger: the first on ties */
                am = a;
                sg = v;
            }
            st->bad |= !(a <= 3.4028234663852886e38f);
        }
        st->mx[j] = mx;
        st->mn[j] = mn;
        st->amax[j] = am;
        st->asg[j] = sg;
    }
}

/* 1.8's rules: the block's parameters from its statistics (finite blocks). */
LB_HD void lb_blk_params(const lb_fmt* f, const lb_bstats* st, lb_bparams* p) {
    const int ns = f->nsub;
    const float cmax = (float)f->cmax;
    p->d = 0.0f;
    p->dmin = 0.0f;
    for (int j = 0; j < LB_NSUB_MAX; ++j) {
        p->S[j] = 0.0f;
        p->M[j] = 0.0f;
        p->sc[j] = 0;
        p->mc[j] = 0;
    }
    switch (f->kind) {
    case LB_KIND_G_Q8:
        p->d = p->S[0] = lb_fp16(st->amax[0] / f->qmax);
        break;
    case LB_KIND_G_SYM:
        p->d = p->S[0] = lb_fp16(st->asg[0] / -(float)f->zero);
        break;
    case LB_KIND_G_ASYM:
        p->d = p->S[0] = lb_fp16((st->mx[0] - st->mn[0]) / f->qmax);
        p->dmin = p->M[0] = lb_fp16(st->mn[0]);
        break;
    case LB_KIND_G_ASYMK: {
        float s[LB_NSUB_MAX], m[LB_NSUB_MAX], smax = 0.0f, mmax = 0.0f;
        for (int j = 0; j < ns; ++j) {
            const float lo = st->mn[j] < 0.0f ? st->mn[j] : 0.0f;
            s[j] = (st->mx[j] - lo) / f->qmax;
            m[j] = -lo;
            smax = j == 0 || s[j] > smax ? s[j] : smax;
            mmax = j == 0 || m[j] > mmax ? m[j] : mmax;
        }
        p->d = lb_fp16(smax / cmax);
        p->dmin = lb_fp16(mmax / cmax);
        for (int j = 0; j < ns; ++j) {
            p->sc[j] = p->d == 0.0f ? 0 : (int)lb_clampf(rintf(s[j] / p->d), 0.0f, cmax);
            p->mc[j] = p->dmin == 0.0f ? 0 : (int)lb_clampf(rintf(m[j] / p->dmin), 0.0f, cmax);
            p->S[j] = p->d * (float)p->sc[j];
            p->M[j] = p->dmin * (float)p->mc[j];
        }
        break;
    }
    case LB_KIND_G_SYMK: {
        float s[LB_NSUB_MAX], t = 0.0f, ta = -1.0f;
        for (int j = 0; j < ns; ++j) {
            s[j] = st->asg[j] / f->qmin;
            if (fabsf(s[j]) > ta) { /* the s_j of largest |s_j|, the first on ties */
                ta = fabsf(s[j]);
                t = s[j];
            }
        }
        p->d = lb_fp16(t / -cmax);
        for (int j = 0; j < ns; ++j) {
            p->sc[j] = p->d == 0.0f ? 0 : (int)lb_clampf(rintf(s[j] / p->d), -cmax, cmax - 1.0f);
            p->S[j] = p->d * (float)p->sc[j];
        }
        break;
    }
    default:
        break;
    }
}

/* The code q of x in sub-block j (1.8; the zero code where the scale is 0). */
LB_HD int lb_blk_code(const lb_fmt* f, const lb_bparams* p, int j, float x) {
    const float S = p->S[j];
    switch (f->kind) {
    case LB_KIND_G_SYM:
        return S == 0.0f ? f->zero
                         : (int)lb_clampf(lb_round_away(x / S) + (float)f->zero, 0.0f, f->qmax);
    case LB_KIND_G_ASYM:
        return S == 0.0f ? 0 : (int)lb_clampf(lb_round_away((x - p->M[0]) / S), 0.0f, f->qmax);
    case LB_KIND_G_ASYMK:
        return S == 0.0f ? 0 : (int)lb_clampf(lb_round_away((x + p->M[j]) / S), 0.0f, f->qmax);
    default: /* G_Q8, G_SYMK: q in [qmin, qmax] */
        return S == 0.0f ? 0 : (int)lb_clampf(lb_round_away(x / S), f->qmin, f->qmax);
    }
}

/* The value of code q in sub-block j, as ggml's dequantize_row_* computes it. */
LB_HD float lb_blk_value(const lb_fmt* f, const lb_bparams* p, int j, int q) {
    switch (f->kind) {
    case LB_KIND_G_SYM: return p->S[0] * (float)(q - f->zero);
    case LB_KIND_G_ASYM: return p->S[0] * (float)q + p->M[0];
    case LB_KIND_G_ASYMK: return p->S[j] * (float)q - p->M[j];
    default: return p->S[j] * (float)q;
    }
}

/* Statistics and parameters of the block at x; 0, or 1 where it holds NaN/Inf. */
LB_HD int lb_blk_prepare(const lb_fmt* f, const float* x, lb_bstats* st, lb_bparams* p) {
    lb_blk_stats(f, x, st);
    if (st->bad) return 1;
    lb_blk_params(f, st, p);
    return 0;
}

/* Q(x) of one block into q (NaN for a block holding NaN/Inf). */
LB_HD void lb_blk_fake_quant(const lb_fmt* f, const float* x, float* out) {
    lb_bstats st;
    lb_bparams p;
    if (lb_blk_prepare(f, x, &st, &p)) {
        for (int i = 0; i < f->block; ++i) out[i] = NAN;
        return;
    }
    for (int i = 0; i < f->block; ++i) {
        const int j = i / f->sub_block;
        out[i] = lb_blk_value(f, &p, j, lb_blk_code(f, &p, j, x[i]));
    }
}

/* Adds share / (the number of x equal to target) to gx of each of them (use_abs: |x| equal,
 * times sign(x)): amax / amin / amax-signed's even split among ties. */
LB_HD void lb_blk_ties(const float* x, float* gx, int i0, int n, float target, float share,
                       int use_abs) {
    int cnt = 0;
    for (int i = i0; i < i0 + n; ++i) cnt += (use_abs ? fabsf(x[i]) : x[i]) == target;
    if (cnt == 0) return;
    share = share / (float)cnt;
    for (int i = i0; i < i0 + n; ++i) {
        const float v = x[i];
        if ((use_abs ? fabsf(v) : v) == target)
            gx[i] += use_abs ? (v > 0.0f ? share : (v < 0.0f ? -share : 0.0f)) : share;
    }
}

/* dL/dx of one block for ste="bitdistiller" (1.8's gradient rules, 1.5's masks): R has identity
 * gradient, the code clamp the inclusive mask; the lattice rounding (fp16, sc_j, mc_j) has
 * identity gradient, so S_j / M_j (d, m of the 32-blocks) carry the gradient of s_j / m_j (the
 * value before fp16), which flows to the block statistics (max, min, max|x|, amax-signed; each
 * split evenly among its ties); d and dmin of the k types come from the detached s_j / m_j.
 * Where a scale is 0 its codes are the constant zero code (no gradient through them).
 * g: upstream gradient; gx: the result (NaN for a block holding NaN/Inf). */
LB_HD void lb_blk_grad(const lb_fmt* f, const float* x, const float* g, float* gx) {
    lb_bstats st;
    lb_bparams p;
    float gS[LB_NSUB_MAX], gM[LB_NSUB_MAX];
    const int sub = f->sub_block, kind = f->kind;
    if (lb_blk_prepare(f, x, &st, &p)) {
        for (int i = 0; i < f->block; ++i) gx[i] = NAN;
        return;
    }
    for (int j = 0; j < f->nsub; ++j) {
        gS[j] = 0.0f;
        gM[j] = 0.0f;
        for (int i = j * sub; i < (j + 1) * sub; ++i) {
            const float S = p.S[j], gi = g[i];
            float t, v, lo = f->qmin, off = 0.0f;
            int in;
            if (S == 0.0f) { /* constant code: Q = M (G_ASYM: +m, G_ASYMK: -M) */
                gx[i] = 0.0f;
                gM[j] += kind == LB_KIND_G_ASYMK ? -gi : gi;
                continue;
            }
            if (kind == LB_KIND_G_ASYM) t = (x[i] - p.M[0]) / S;
            else if (kind == LB_KIND_G_ASYMK) t = (x[i] + p.M[j]) / S;
            else t = x[i] / S;
            if (kind == LB_KIND_G_SYM) {
                off = (float)f->zero;
                lo = 0.0f;
            } else if (kind == LB_KIND_G_ASYM || kind == LB_KIND_G_ASYMK) {
                lo = 0.0f;
            }
            v = lb_round_away(t) + off;
            in = v >= lo && v <= f->qmax;
            gx[i] = in ? gi : 0.0f;
            /* dQ/dS = (q - off) - [in] t;  dQ/dM: G_ASYM 1 - [in], G_ASYMK [in] - 1 */
            gS[j] += gi * ((lb_clampf(v, lo, f->qmax) - off) - (in ? t : 0.0f));
            if (kind == LB_KIND_G_ASYM) gM[j] += in ? 0.0f : gi;
            else if (kind == LB_KIND_G_ASYMK) gM[j] += in ? 0.0f : -gi;
        }
    }
    /* the parameters' gradients to the statistics, then to the elements that set them */
    switch (kind) {
    case LB_KIND_G_Q8: /* d = max|x| / qmax */
        lb_blk_ties(x, gx, 0, sub, st.amax[0], gS[0] / f->qmax, 1);
        break;
    case LB_KIND_G_SYM: /* d = amax-signed / -zero */
        lb_blk_ties(x, gx, 0, sub, st.asg[0], gS[0] / -(float)f->zero, 0);
        break;
    case LB_KIND_G_ASYM: { /* d = (max - min) / qmax, m = min */
        const float gd = gS[0] / f->qmax;
        lb_blk_ties(x, gx, 0, sub, st.mx[0], gd, 0);
        lb_blk_ties(x, gx, 0, sub, st.mn[0], gM[0] - gd, 0);
        break;
    }
    case LB_KIND_G_ASYMK: /* s_j = (max_j - lo_j) / qmax, m_j = -lo_j, lo_j = min(min_j, 0) */
        for (int j = 0; j < f->nsub; ++j) {
            const float gs = gS[j] / f->qmax;
            lb_blk_ties(x, gx, j * sub, sub, st.mx[j], gs, 0);
            if (st.mn[j] <= 0.0f) lb_blk_ties(x, gx, j * sub, sub, st.mn[j], -gs - gM[j], 0);
        }
        break;
    default: /* G_SYMK: s_j = amax-signed_j / qlo */
        for (int j = 0; j < f->nsub; ++j)
            lb_blk_ties(x, gx, j * sub, sub, st.asg[j], gS[j] / f->qmin, 0);
        break;
    }
}

/* ---- the GGUF block bytes (ggml-common.h), little endian ---- */
LB_HD void lb_put_half(uint8_t* b, float v) {
    const uint16_t h = lb_f16_bits(v);
    b[0] = (uint8_t)(h & 0xffu);
    b[1] = (uint8_t)(h >> 8);
}
LB_HD float lb_get_half(const uint8_t* b) {
    return lb_f16_value((uint16_t)(b[0] | (b[1] << 8)));
}

/* qs of block_q4_0/1, q5_0/1: byte l holds code l (low nibble) and code l + 16 (high). */
LB_HD void lb_put_nibbles32(uint8_t* qs, const int* q) {
    for (int l = 0; l < 16; ++l) qs[l] = (uint8_t)((q[l] & 15) | ((q[l + 16] & 15) << 4));
}
/* qh of block_q5_0/1: bit l of the little-endian uint32 = bit 4 of code l. */
LB_HD void lb_put_high32(uint8_t* qh, const int* q) {
    for (int b = 0; b < 4; ++b) {
        int v = 0;
        for (int k = 0; k < 8; ++k) v |= ((q[8 * b + k] >> 4) & 1) << k;
        qh[b] = (uint8_t)v;
    }
}
/* 256 2-bit values: byte 32h + l holds value 128h + 32k + l at bits 2k (block_q2_K/q3_K qs). */
LB_HD void lb_put_crumbs256(uint8_t* qs, const int* L) {
    for (int h = 0; h < 2; ++h)
        for (int l = 0; l < 32; ++l) {
            int v = 0;
            for (int k = 0; k < 4; ++k) v |= (L[128 * h + 32 * k + l] & 3) << (2 * k);
            qs[32 * h + l] = (uint8_t)v;
        }
}
LB_HD int lb_get_crumb256(const uint8_t* qs, int i) {
    return (qs[32 * (i / 128) + (i % 32)] >> (2 * ((i % 128) / 32))) & 3;
}

/* Writes the block of parameters p and codes q (1.8's q) as ggml-common.h's block_<type>,
 * f->type_size bytes at out. */
LB_HD void lb_blk_pack(const lb_fmt* f, const lb_bparams* p, const int* q, uint8_t* out) {
    int tmp[LB_QK_MAX];
    switch (f->layout) {
    case LB_BLK_Q8_0: /* d, qs[32] int8 */
        lb_put_half(out, p->d);
        for (int i = 0; i < 32; ++i) out[2 + i] = (uint8_t)(int8_t)q[i];
        break;
    case LB_BLK_Q4_0: /* d, qs[16] */
        lb_put_half(out, p->d);
        lb_put_nibbles32(out + 2, q);
        break;
    case LB_BLK_Q4_1: /* d, m, qs[16] */
        lb_put_half(out, p->d);
        lb_put_half(out + 2, p->dmin);
        lb_put_nibbles32(out + 4, q);
        break;
    case LB_BLK_Q5_0: /* d, qh[4], qs[16] */
        lb_put_half(out, p->d);
        lb_put_high32(out + 2, q);
        lb_put_nibbles32(out + 6, q);
        break;
    case LB_BLK_Q5_1: /* d, m, qh[4], qs[16] */
        lb_put_half(out, p->d);
        lb_put_half(out + 2, p->dmin);
        lb_put_high32(out + 4, q);
        lb_put_nibbles32(out + 8, q);
        break;
    case LB_BLK_Q2_K: /* scales[16] (scale | min << 4), qs[64], d, dmin */
        for (int j = 0; j < 16; ++j) out[j] = (uint8_t)(p->sc[j] | (p->mc[j] << 4));
        lb_put_crumbs256(out + 16, q);
        lb_put_half(out + 80, p->d);
        lb_put_half(out + 82, p->dmin);
        break;
    case LB_BLK_Q3_K: { /* hmask[32], qs[64], scales[12], d; codes + 4, scale codes + 32 */
        uint8_t* sc = out + 96;
        for (int i = 0; i < 256; ++i) tmp[i] = q[i] + 4;
        for (int l = 0; l < 32; ++l) {
            int v = 0;
            for (int k = 0; k < 8; ++k) v |= ((tmp[32 * k + l] >> 2) & 1) << k;
            out[l] = (uint8_t)v;
        }
        lb_put_crumbs256(out + 32, tmp);
        for (int j = 0; j < 12; ++j) sc[j] = 0;
        for (int j = 0; j < 8; ++j)
            sc[j] = (uint8_t)(((p->sc[j] + 32) & 15) | (((p->sc[j + 8] + 32) & 15) << 4));
        for (int j = 0; j < 16; ++j)
            sc[8 + j % 4] |= (uint8_t)((((p->sc[j] + 32) >> 4) & 3) << (2 * (j / 4)));
        lb_put_half(out + 108, p->d);
        break;
    }
    case LB_BLK_Q4_K:
    case LB_BLK_Q5_K: { /* d, dmin, scales[12] (get_scale_min_k4), [qh[32],] qs[128] */
        uint8_t* s = out + 4;
        uint8_t* qs = out + (f->layout == LB_BLK_Q5_K ? 48 : 16);
        lb_put_half(out, p->d);
        lb_put_half(out + 2, p->dmin);
        for (int j = 0; j < 4; ++j) {
            s[j] = (uint8_t)(p->sc[j] | ((p->sc[j + 4] >> 4) << 6));
            s[j + 4] = (uint8_t)(p->mc[j] | ((p->mc[j + 4] >> 4) << 6));
            s[j + 8] = (uint8_t)((p->sc[j + 4] & 15) | ((p->mc[j + 4] & 15) << 4));
        }
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l)
                qs[32 * c + l] = (uint8_t)((q[64 * c + l] & 15) | ((q[64 * c + 32 + l] & 15) << 4));
        if (f->layout == LB_BLK_Q5_K)
            for (int l = 0; l < 32; ++l) {
                int v = 0;
                for (int c = 0; c < 4; ++c)
                    v |= (((q[64 * c + l] >> 4) & 1) << (2 * c)) |
                         (((q[64 * c + 32 + l] >> 4) & 1) << (2 * c + 1));
                out[16 + l] = (uint8_t)v;
            }
        break;
    }
    case LB_BLK_Q6_K: /* ql[128], qh[64], scales[16] int8, d; codes + 32 */
        for (int h = 0; h < 2; ++h)
            for (int l = 0; l < 32; ++l) {
                const int* L = q + 128 * h + l;
                const int a = L[0] + 32, b = L[32] + 32, c = L[64] + 32, e = L[96] + 32;
                out[64 * h + l] = (uint8_t)((a & 15) | ((c & 15) << 4));
                out[64 * h + 32 + l] = (uint8_t)((b & 15) | ((e & 15) << 4));
                out[128 + 32 * h + l] =
                    (uint8_t)((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
            }
        for (int j = 0; j < 16; ++j) out[192 + j] = (uint8_t)(int8_t)p->sc[j];
        lb_put_half(out + 208, p->d);
        break;
    default:
        break;
    }
}

/* Reads the block at in (ggml-common.h's block_<type>) into its parameters p and codes q
 * (1.8's q), the inverse of lb_blk_pack; S_j / M_j computed as dequantize_row_* does. */
LB_HD void lb_blk_unpack(const lb_fmt* f, const uint8_t* in, lb_bparams* p, int* q) {
    p->d = p->dmin = 0.0f;
    for (int j = 0; j < LB_NSUB_MAX; ++j) {
        p->S[j] = p->M[j] = 0.0f;
        p->sc[j] = p->mc[j] = 0;
    }
    switch (f->layout) {
    case LB_BLK_Q8_0:
        p->d = p->S[0] = lb_get_half(in);
        for (int i = 0; i < 32; ++i) q[i] = (int)(int8_t)in[2 + i];
        break;
    case LB_BLK_Q4_0:
    case LB_BLK_Q4_1:
    case LB_BLK_Q5_0:
    case LB_BLK_Q5_1: {
        const int has_m = f->layout == LB_BLK_Q4_1 || f->layout == LB_BLK_Q5_1;
        const int five = f->layout == LB_BLK_Q5_0 || f->layout == LB_BLK_Q5_1;
        const uint8_t* qh = in + (has_m ? 4 : 2);
        const uint8_t* qs = qh + (five ? 4 : 0);
        p->d = p->S[0] = lb_get_half(in);
        if (has_m) p->dmin = p->M[0] = lb_get_half(in + 2);
        for (int l = 0; l < 16; ++l) {
            q[l] = qs[l] & 15;
            q[l + 16] = qs[l] >> 4;
        }
        if (five)
            for (int i = 0; i < 32; ++i) q[i] |= ((qh[i / 8] >> (i % 8)) & 1) << 4;
        break;
    }
    case LB_BLK_Q2_K:
        p->d = lb_get_half(in + 80);
        p->dmin = lb_get_half(in + 82);
        for (int j = 0; j < 16; ++j) {
            p->sc[j] = in[j] & 15;
            p->mc[j] = in[j] >> 4;
            p->S[j] = p->d * (float)p->sc[j];
            p->M[j] = p->dmin * (float)p->mc[j];
        }
        for (int i = 0; i < 256; ++i) q[i] = lb_get_crumb256(in + 16, i);
        break;
    case LB_BLK_Q3_K: {
        const uint8_t* sc = in + 96;
        p->d = lb_get_half(in + 108);
        for (int j = 0; j < 16; ++j) {
            const int low = j < 8 ? (sc[j] & 15) : (sc[j - 8] >> 4);
            const int high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
            p->sc[j] = (low | (high << 4)) - 32;
            p->S[j] = p->d * (float)p->sc[j];
        }
        for (int i = 0; i < 256; ++i)
            q[i] = lb_get_crumb256(in + 32, i) - (((in[i % 32] >> (i / 32)) & 1) ? 0 : 4);
        break;
    }
    case LB_BLK_Q4_K:
    case LB_BLK_Q5_K: {
        const uint8_t* s = in + 4;
        const uint8_t* qs = in + (f->layout == LB_BLK_Q5_K ? 48 : 16);
        p->d = lb_get_half(in);
        p->dmin = lb_get_half(in + 2);
        for (int j = 0; j < 8; ++j) {
            if (j < 4) {
                p->sc[j] = s[j] & 63;
                p->mc[j] = s[j + 4] & 63;
            } else {
                p->sc[j] = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
                p->mc[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
            }
            p->S[j] = p->d * (float)p->sc[j];
            p->M[j] = p->dmin * (float)p->mc[j];
        }
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l) {
                q[64 * c + l] = qs[32 * c + l] & 15;
                q[64 * c + 32 + l] = qs[32 * c + l] >> 4;
                if (f->layout == LB_BLK_Q5_K) {
                    q[64 * c + l] |= ((in[16 + l] >> (2 * c)) & 1) << 4;
                    q[64 * c + 32 + l] |= ((in[16 + l] >> (2 * c + 1)) & 1) << 4;
                }
            }
        break;
    }
    case LB_BLK_Q6_K:
        p->d = lb_get_half(in + 208);
        for (int j = 0; j < 16; ++j) {
            p->sc[j] = (int)(int8_t)in[192 + j];
            p->S[j] = p->d * (float)p->sc[j];
        }
        for (int h = 0; h < 2; ++h)
            for (int l = 0; l < 32; ++l) {
                const uint8_t a = in[64 * h + l], b = in[64 * h + 32 + l], hb = in[128 + 32 * h + l];
                int* L = q + 128 * h + l;
                L[0] = ((a & 15) | (((hb >> 0) & 3) << 4)) - 32;
                L[32] = ((b & 15) | (((hb >> 2) & 3) << 4)) - 32;
                L[64] = ((a >> 4) | (((hb >> 4) & 3) << 4)) - 32;
                L[96] = ((b >> 4) | (((hb >> 6) & 3) << 4)) - 32;
            }
        break;
    default:
        break;
    }
}

/* Quantizes the block at x into f->type_size bytes at out; returns 1 (bytes unspecified) where
 * it holds NaN/Inf. */
LB_HD int lb_blk_quantize(const lb_fmt* f, const float* x, uint8_t* out) {
    lb_bstats st;
    lb_bparams p;
    int q[LB_QK_MAX];
    if (lb_blk_prepare(f, x, &st, &p)) return 1;
    for (int i = 0; i < f->block; ++i) q[i] = lb_blk_code(f, &p, i / f->sub_block, x[i]);
    lb_blk_pack(f, &p, q, out);
    return 0;
}

/* The f->block values the block at in stands for (ggml's dequantize_row_*). */
LB_HD void lb_blk_dequantize(const lb_fmt* f, const uint8_t* in, float* y) {
    lb_bparams p;
    int q[LB_QK_MAX];
    lb_blk_unpack(f, in, &p, q);
    for (int i = 0; i < f->block; ++i) y[i] = lb_blk_value(f, &p, i / f->sub_block, q[i]);
}

#endif /* LOWBIT_FORMATS_GGML_H */
