// Flash-attention pieces shared by the sm_80 (sm80.cu) and sm_90a (sm90.cu) kernels, all on the m16n8 accumulator
// layout of one warp (a wgmma m64 accumulator is four warps of that layout): the mask, the online softmax, P
// packed as the A operand of PV, and the per-thread epilogue.
//
// Rows of a warp: wrow0 + mt * 16 + g (+ 8), g = lane / 4; columns kv0 + nb * 8 + 2 * t4 (+ 1), t4 = lane % 4.
// Softmax in base 2: scale_log2 = scale * log2(e) is folded into the exponent, m_i is kept in that base, and
// lse = (m_i + log2 l_i) * ln 2 at the end.
#pragma once
#include "include/convert.cuh"
#include "include/ptx.cuh"
#include "include/reduce.cuh"

namespace attn {
using namespace qkern;

// Set S to -inf where the key lies past the segment end or (causal) after the query row.
template <int MT, int NB, bool CAUSAL>
__device__ __forceinline__ void mask_tile(float (&s)[MT][NB][4], int wrow0, int kv0, int L, int g, int t4) {
    const float NEG_INF = f32_neg_inf();
    if (kv0 + NB * 8 > L || (CAUSAL && kv0 + NB * 8 - 1 > wrow0)) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nb = 0; nb < NB; ++nb)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int row = wrow0 + mt * 16 + g + ((e >> 1) << 3);
                    const int col = kv0 + nb * 8 + 2 * t4 + (e & 1);
                    if (col >= L || (CAUSAL && col > row)) s[mt][nb][e] = NEG_INF;
                }
    }
}

// Online softmax on one S tile (base 2): new running max, P = exp2(S * scale_log2 - max) in place of S, running
// per-thread partial sums (the quad of threads sharing a row adds them up at the end), and alpha = exp2(old max -
// new max) per row. Returns whether some row of the warp got a new maximum (otherwise every alpha is exactly 1).
template <int MT, int NB>
__device__ __forceinline__ bool softmax_p(float (&s)[MT][NB][4], float (&m_i)[MT][2], float (&l_i)[MT][2],
                                          float (&alpha)[MT][2], float scale_log2) {
    const float NEG_INF = f32_neg_inf();
    bool grew = false;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float mx = NEG_INF;
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) mx = fmaxf(mx, fmaxf(s[mt][nb][2 * h], s[mt][nb][2 * h + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m_i[mt][h], mx * scale_log2);
            const float m_use = m_new == NEG_INF ? 0.f : m_new;  // a row with no key yet
            alpha[mt][h] = ex2(m_i[mt][h] - m_use);
            grew |= m_new != m_i[mt][h];
            m_i[mt][h] = m_new;
            float rs = 0.f;
#pragma unroll
            for (int nb = 0; nb < NB; ++nb)
#pragma unroll
                for (int e = 2 * h; e < 2 * h + 2; ++e) {
                    const float p = ex2(fmaf(s[mt][nb][e], scale_log2, -m_use));
                    s[mt][nb][e] = p;
                    rs += p;
                }
            l_i[mt][h] = l_i[mt][h] * alpha[mt][h] + rs;
        }
    return __any_sync(0xffffffffu, grew);
}

// O *= alpha per row.
template <int MT, int DB>
__device__ __forceinline__ void rescale_o(float (&acc)[MT][DB][4], const float (&alpha)[MT][2]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int db = 0; db < DB; ++db) {
            acc[mt][db][0] *= alpha[mt][0];
            acc[mt][db][1] *= alpha[mt][0];
            acc[mt][db][2] *= alpha[mt][1];
            acc[mt][db][3] *= alpha[mt][1];
        }
}

// Online softmax step: softmax_p, then O rescaled only when some row of the warp has a new maximum (after the
// first few key tiles most tiles raise no row's maximum, and then every alpha is 2^0 = 1 exactly).
template <int MT, int NB, int DB>
__device__ __forceinline__ void softmax_update(float (&s)[MT][NB][4], float (&acc)[MT][DB][4], float (&m_i)[MT][2],
                                               float (&l_i)[MT][2], float scale_log2) {
    float alpha[MT][2];
    if (softmax_p<MT, NB>(s, m_i, l_i, alpha, scale_log2)) rescale_o<MT, DB>(acc, alpha);
}

// Epilogue of one warp: O / l for its valid rows, lse = (m + log2 l) * ln 2.
template <typename T, int MT, int DB, int D>
__device__ __forceinline__ void store_rows(const float (&acc)[MT][DB][4], const float (&m_i)[MT][2],
                                           const float (&l_i)[MT][2], T* __restrict__ o, float* __restrict__ lse,
                                           int seg_start, int wrow0, int L, int Hq, int head, int g, int t4) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float l = quad_sum(l_i[mt][h]);
            const int row = wrow0 + mt * 16 + g + h * 8;
            if (row < L) {
                const float inv = 1.f / l;
                T* orow = o + ((size_t)(seg_start + row) * Hq + head) * D + 2 * t4;
#pragma unroll
                for (int db = 0; db < DB; ++db)
                    *reinterpret_cast<u32*>(orow + db * 8) =
                        pack2<T>(acc[mt][db][2 * h] * inv, acc[mt][db][2 * h + 1] * inv);
                if (lse != nullptr && t4 == 0)
                    lse[(size_t)(seg_start + row) * Hq + head] = (m_i[mt][h] + log2f(l)) * 0.69314718055994531f;
            }
        }
}

// P (n-blocks 2*kb2, 2*kb2+1 of S, 16 keys) rounded to T and packed as the A operand of PV: S's accumulator
// layout is the A-operand layout of the next mma.
template <typename T, int MT, int NB>
__device__ __forceinline__ void pack_p(u32 (&pa)[MT][4], const float (&s)[MT][NB][4], int kb2) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = pack2<T>(s[mt][2 * kb2][0], s[mt][2 * kb2][1]);
        pa[mt][1] = pack2<T>(s[mt][2 * kb2][2], s[mt][2 * kb2][3]);
        pa[mt][2] = pack2<T>(s[mt][2 * kb2 + 1][0], s[mt][2 * kb2 + 1][1]);
        pa[mt][3] = pack2<T>(s[mt][2 * kb2 + 1][2], s[mt][2 * kb2 + 1][3]);
    }
}

}  // namespace attn
