/* csrc/cpu/arch/x86/clip_search_avx512.c: the AVX-512 variant of the clip_search CPU kernel:
 * the row worker of csrc/cpu/clip_search_impl.h compiled for that target (the compiler vectorises
 * its loops) as the kernel table lb_clip_kernels_avx512. x86 only: elsewhere the file is empty. */
#include "../../clip_search_impl.h"

#if LB_X86
LB_CLIP_KERNELS(avx512, LB_AVX512_ATTR)
#endif
