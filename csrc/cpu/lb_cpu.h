/* csrc/cpu/lb_cpu.h: what every CPU kernel file shares — the always-inline body marker, the
 * fixed reduction width, and the three ISA variants each kernel body is compiled into (scalar
 * twin with vectorisation off, AVX2, AVX-512) via function attributes, picked at run time by
 * lb_isa (no host-specific -march flag). */
#ifndef LOWBIT_CPU_H
#define LOWBIT_CPU_H

#define LB_INLINE static inline __attribute__((always_inline))
/* Reductions run in this many fixed lanes so the variants that share a body sum alike. */
#define LANES 16

#define LB_SCALAR_ATTR __attribute__((optimize("no-tree-vectorize")))
#define LB_AVX2_ATTR __attribute__((target("avx2,fma,f16c")))
#define LB_AVX512_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

#endif /* LOWBIT_CPU_H */
