/* csrc/cpu/runtime.c: the CPU kernels' runtime hook (lb_rt) with its serial defaults, CPU ISA
 * detection, and the thread-pool and thread-count entry points every kernel calls. */
#include "lb_cpu.h"

lb_runtime lb_rt = {LB_ISA_SCALAR, NULL, NULL, 0};

int lb_isa_supported(int isa) {
#if LB_X86
    __builtin_cpu_init();
    if (isa == LB_ISA_SCALAR) return 1;
    if (isa == LB_ISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == LB_ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (isa == LB_ISA_AVXVNNI)
        return lb_isa_supported(LB_ISA_AVX2) && __builtin_cpu_supports("avxvnni");
    if (isa == LB_ISA_AVX512VNNI)
        return lb_isa_supported(LB_ISA_AVX512) && __builtin_cpu_supports("avx512vnni");
    return 0;
#else
    return isa == LB_ISA_SCALAR;
#endif
}

int lb_isa_best(void) {
    static const int order[] = {LB_ISA_AVX512VNNI, LB_ISA_AVX512, LB_ISA_AVXVNNI, LB_ISA_AVX2};
    for (int i = 0; i < 4; ++i)
        if (lb_isa_supported(order[i])) return order[i];
    return LB_ISA_SCALAR;
}

void lb_isa_set(int isa) {
    lb_rt.vnni = isa == LB_ISA_AVXVNNI || isa == LB_ISA_AVX512VNNI;
    lb_rt.isa = isa == LB_ISA_AVXVNNI ? LB_ISA_AVX2 : isa == LB_ISA_AVX512VNNI ? LB_ISA_AVX512 : isa;
}

int lb_isa_code(void) {
    if (!lb_rt.vnni) return lb_rt.isa;
    return lb_rt.isa == LB_ISA_AVX512 ? LB_ISA_AVX512VNNI : LB_ISA_AVXVNNI;
}

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
