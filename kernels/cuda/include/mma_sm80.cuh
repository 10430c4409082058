// sm_80 warp-level tensor-core products (mma.sync, fp32 accumulators) and ldmatrix fragment loads.
//   Mma<T>::k16(c, a, b0, b1): m16n8k16, A row-major (4 registers), B column-major (2), C/D 4 floats per thread
//   Mma<T>::k8(c, a0, a1, b0): m16n8k8
//   mma_k32<T, SETS, NT>(c, a, b): a 32-wide k step of the weight-streaming GEMVs (below)
// Accumulator layout of m16n8 (per thread, g = lane / 4, t4 = lane % 4): c[0], c[1] at row g, columns 2 t4 and
// 2 t4 + 1; c[2], c[3] at row g + 8. That is also the A-operand layout of the next mma, once packed with pack2.
#pragma once
#include "convert.cuh"

namespace qkern {

template <typename T> struct Mma;

// One specialisation per element type, TY its PTX name.
#define QKERN_MMA_SM80(TYPE, TY)                                                                                \
    template <> struct Mma<TYPE> {                                                                             \
        static __device__ __forceinline__ void k16(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {        \
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TY "." TY ".f32 {%0,%1,%2,%3}, "            \
                         "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                                             \
                         : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                        \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));                      \
        }                                                                                                      \
        static __device__ __forceinline__ void k8(float (&c)[4], u32 a0, u32 a1, u32 b0) {                    \
            asm volatile("mma.sync.aligned.m16n8k8.row.col.f32." TY "." TY ".f32 {%0,%1,%2,%3}, {%4,%5}, "    \
                         "{%6}, {%0,%1,%2,%3};\n"                                                               \
                         : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                        \
                         : "r"(a0), "r"(a1), "r"(b0));                                                         \
        }                                                                                                      \
    };
QKERN_MMA_SM80(__nv_bfloat16, "bf16")
QKERN_MMA_SM80(__half, "f16")
#undef QKERN_MMA_SM80

// One 32-wide k step of SETS 16-row weight tiles times NT 8-column tiles of x, on registers loaded as the
// weight-streaming GEMVs load them (gemm.cu's skinny GEMM, moe.cu's decode experts): thread (g = lane / 4,
// q = lane % 4) holds the 8 contiguous elements 8q .. 8q+7 of weight rows g (a[s][0]) and g + 8 (a[s][1]) and of
// x row g of tile j (b[j]); elements 0..3 feed the first m16n8k16 as its logical k = 2q, 2q+1, 2q+8, 2q+9 and
// 4..7 the second. A and B use the same k permutation, so the dot products are unchanged.
template <typename T, int SETS, int NT>
__device__ __forceinline__ void mma_k32(float (&c)[SETS][NT][4], const uint4 (&a)[SETS][2], const uint4 (&b)[NT]) {
#pragma unroll
    for (int s = 0; s < SETS; ++s) {
        const u32 a1[4] = {a[s][0].x, a[s][1].x, a[s][0].y, a[s][1].y};
        const u32 a2[4] = {a[s][0].z, a[s][1].z, a[s][0].w, a[s][1].w};
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            Mma<T>::k16(c[s][j], a1, b[j].x, b[j].y);
            Mma<T>::k16(c[s][j], a2, b[j].z, b[j].w);
        }
    }
}

// ldmatrix: 8x8 16-bit matrices from shared memory into fragments; lanes 8i .. 8i+7 give the row addresses of
// matrix i. _t: transposed (for a B operand stored N-major).
__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2(u32 (&r)[2], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2_t(u32 (&r)[2], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}

}  // namespace qkern
