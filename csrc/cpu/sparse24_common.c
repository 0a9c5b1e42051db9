/* csrc/cpu/sparse24_common.c: the data every variant of the sparse24 CPU kernels shares (declared
 * in csrc/cpu/sparse24_impl.h): the table from a meta byte to the kept positions of its two
 * groups, which the backward-to-x kernels use as an expand-load mask. */
#include "sparse24_impl.h"

/* bit i of entry b: position i of the byte's two groups (low nibble: positions 0-3, high: 4-7)
 * is kept, i.e. it is one of the group's two 2-bit indices */
#define LB24_KEPT8(b)                                                   \
    (uint8_t)(((1 << ((b) & 3)) | (1 << (((b) >> 2) & 3))) |           \
              (((1 << (((b) >> 4) & 3)) | (1 << ((b) >> 6))) << 4))
#define LB24_KEPT8_4(b) LB24_KEPT8(b), LB24_KEPT8(b + 1), LB24_KEPT8(b + 2), LB24_KEPT8(b + 3)
#define LB24_KEPT8_16(b) LB24_KEPT8_4(b), LB24_KEPT8_4(b + 4), LB24_KEPT8_4(b + 8), LB24_KEPT8_4(b + 12)
#define LB24_KEPT8_64(b) \
    LB24_KEPT8_16(b), LB24_KEPT8_16(b + 16), LB24_KEPT8_16(b + 32), LB24_KEPT8_16(b + 48)

const uint8_t lb24_kept_mask8[256] = {LB24_KEPT8_64(0), LB24_KEPT8_64(64), LB24_KEPT8_64(128),
                                      LB24_KEPT8_64(192)};
