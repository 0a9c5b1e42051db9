/* csrc/cpu/runtime.c: the CPU kernels' runtime hook (lb_rt) with its serial defaults, the CPU
 * dispatch table (one row per ISA code: how to test for it and which kernel table of every
 * family it runs, see csrc/cpu/lb_cpu.h), and the thread-pool and thread-count entry points every
 * kernel calls. */
#include "lb_cpu.h"

/* Every family's kernel tables (defined by the families' scalar file and arch files). */
#define LB_DECLARE_TABLES(fam)                                   \
    extern const struct lb_##fam##_kernels lb_##fam##_kernels_scalar; \
    LB_DECLARE_X86_TABLES(fam)
#if LB_X86
#define LB_DECLARE_X86_TABLES(fam)                                \
    extern const struct lb_##fam##_kernels lb_##fam##_kernels_avx2;   \
    extern const struct lb_##fam##_kernels lb_##fam##_kernels_avx512;
#else
#define LB_DECLARE_X86_TABLES(fam)
#endif
LB_CPU_FAMILIES(LB_DECLARE_TABLES)
#if LB_X86
/* the VNNI variants exist for the integer-dot kernels of qlinear and qlinear_blk only */
extern const struct lb_ql_kernels lb_ql_kernels_avxvnni;
extern const struct lb_ql_kernels lb_ql_kernels_avx512vnni;
extern const struct lb_qlb_kernels lb_qlb_kernels_avxvnni;
extern const struct lb_qlb_kernels lb_qlb_kernels_avx512vnni;
#endif

typedef struct {
    int (*supported)(void); /* NULL: not built for this architecture */
#define LB_ROW_FIELD(fam) const struct lb_##fam##_kernels* fam;
    LB_CPU_FAMILIES(LB_ROW_FIELD)
#undef LB_ROW_FIELD
} lb_isa_row;

static int lb_cpu_scalar(void) { return 1; }
#if LB_X86
static int lb_cpu_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
static int lb_cpu_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
static int lb_cpu_avxvnni(void) { return lb_cpu_avx2() && __builtin_cpu_supports("avxvnni"); }
static int lb_cpu_avx512vnni(void) {
    return lb_cpu_avx512() && __builtin_cpu_supports("avx512vnni");
}
#endif

/* The dispatch table: per ISA code, its test and the kernel table of each family
 * (fake_quant, clip_search, kl_loss, qlinear, sparse24, qlinear_blk). */
static const lb_isa_row lb_isa_rows[LB_ISA_COUNT] = {
    [LB_ISA_SCALAR] = {lb_cpu_scalar, &lb_fq_kernels_scalar, &lb_clip_kernels_scalar,
                       &lb_kl_kernels_scalar, &lb_ql_kernels_scalar, &lb_s24_kernels_scalar,
                       &lb_qlb_kernels_scalar},
#if LB_X86
    [LB_ISA_AVX2] = {lb_cpu_avx2, &lb_fq_kernels_avx2, &lb_clip_kernels_avx2, &lb_kl_kernels_avx2,
                     &lb_ql_kernels_avx2, &lb_s24_kernels_avx2, &lb_qlb_kernels_avx2},
    [LB_ISA_AVX512] = {lb_cpu_avx512, &lb_fq_kernels_avx512, &lb_clip_kernels_avx512,
                       &lb_kl_kernels_avx512, &lb_ql_kernels_avx512, &lb_s24_kernels_avx512,
                       &lb_qlb_kernels_avx512},
    [LB_ISA_AVXVNNI] = {lb_cpu_avxvnni, &lb_fq_kernels_avx2, &lb_clip_kernels_avx2,
                        &lb_kl_kernels_avx2, &lb_ql_kernels_avxvnni, &lb_s24_kernels_avx2,
                        &lb_qlb_kernels_avxvnni},
    [LB_ISA_AVX512VNNI] = {lb_cpu_avx512vnni, &lb_fq_kernels_avx512, &lb_clip_kernels_avx512,
                           &lb_kl_kernels_avx512, &lb_ql_kernels_avx512vnni,
                           &lb_s24_kernels_avx512, &lb_qlb_kernels_avx512vnni},
#endif
};

lb_runtime lb_rt = {LB_ISA_SCALAR, NULL, NULL, &lb_fq_kernels_scalar, &lb_clip_kernels_scalar,
                    &lb_kl_kernels_scalar, &lb_ql_kernels_scalar, &lb_s24_kernels_scalar,
                    &lb_qlb_kernels_scalar};

int lb_isa_supported(int isa) {
    return isa >= 0 && isa < LB_ISA_COUNT && lb_isa_rows[isa].supported &&
           lb_isa_rows[isa].supported();
}

int lb_isa_best(void) {
    static const int order[] = {LB_ISA_AVX512VNNI, LB_ISA_AVX512, LB_ISA_AVXVNNI, LB_ISA_AVX2};
    for (int i = 0; i < 4; ++i)
        if (lb_isa_supported(order[i])) return order[i];
    return LB_ISA_SCALAR;
}

void lb_isa_set(int isa) {
    const lb_isa_row* r = &lb_isa_rows[lb_isa_supported(isa) ? isa : LB_ISA_SCALAR];
    lb_rt.isa = (int)(r - lb_isa_rows);
#define LB_SET_TABLE(fam) lb_rt.fam = r->fam;
    LB_CPU_FAMILIES(LB_SET_TABLE)
#undef LB_SET_TABLE
}

int lb_isa_code(void) { return lb_rt.isa; }

void lb_parallel(int64_t n, int64_t grain, lb_parallel_fn fn, void* ctx) {
    if (n <= 0) return;
    if (n <= grain || !lb_rt.parallel_for) {
        fn(0, n, ctx);
        return;
    }
    lb_rt.parallel_for(n, grain, fn, ctx);
}

int lb_num_threads(void) {
    int n = lb_rt.num_threads ? lb_rt.num_threads() : 1;
    return n > 0 ? n : 1;
}
