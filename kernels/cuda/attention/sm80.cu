// Packed varlen flash attention (forward) on mma.sync m16n8k16 tensor cores, sm_80+: attn::attn_fwd.
//
//   o[t, h, :] = softmax_j(scale * q[t, h, :] . k[j, h/g, :]) v[j, h/g, :]
//   over keys j of the segment of t (cu_seqlens), j <= t when CAUSAL; g = Hq / Hkv (GQA).
//
// Layout: q [T, Hq, D], k/v [T, Hkv, D], o [T, Hq, D] contiguous; lse [T, Hq] fp32 (optional, natural log).
// One CTA = one tile of BM = 16 * MT * NW query rows of one segment and one head; each of the NW warps owns
// 16 * MT consecutive rows. The CTA walks the segment's key tiles of BN rows, double-buffered through
// cp.async (16-byte chunks, zero-filled past the segment end), and keeps O, the running max and the running
// sum in registers (online softmax in fp32, base 2 with log2(e) folded into the scale).
//
// Head dims: D is any multiple of 8 (instantiated for 64, 72, 80, 128, 256). D = 72 is native: QK^T runs
// four m16n8k16 k-steps plus one m16n8k8 step on columns 64..71, and PV's n-dim is 9 blocks of 8, so there
// is no padding in memory or in shared memory.
//
// Shared memory rows have an odd number of 16-byte chunks (D/8, or D/8 + 1 when that is even), which makes
// every ldmatrix (8 rows x 16 bytes at one column) hit 8 distinct bank groups.
//
// Tile map: the grid is 1-D, head fastest (so the heads sharing a K/V head run side by side, and for causal
// all heads of the heaviest tile start first); each CTA finds its (segment, tile) with find_tile
// (include/varlen.cuh). CTAs past the last tile exit.
//
// The Hopper kernel (sm90.cu) shares the mask, softmax and epilogue code (online_softmax.cuh).
#include "include/cp_async.cuh"
#include "include/mma_sm80.cuh"
#include "include/varlen.cuh"
#include "attention/online_softmax.cuh"

namespace attn {
using namespace qkern;

// Copy rows [row0, row0 + NROWS) of a [*, D] strided matrix into shared memory (row stride STR elements);
// rows at or past `limit` are zero-filled (never read from global memory). 8 consecutive threads share a row
// (chunks c, c + 8, ...), so each thread computes one row address per pass and every loop bound is a
// compile-time constant (the cheaper alternative to dividing a flat chunk index by D / 8).
template <typename T, int D, int STR, int NROWS, int NT>
__device__ __forceinline__ void load_tile(T* s, const T* g, size_t row_stride, int row0, int limit, int tid) {
    constexpr int CH = D / 8, TPR = 8, RPP = NT / TPR;  // chunks per row, threads per row, rows per pass
    static_assert(NT % TPR == 0 && NROWS % RPP == 0, "load_tile shape");
    const int c0 = tid % TPR, r0 = tid / TPR;
#pragma unroll
    for (int p = 0; p < NROWS / RPP; ++p) {
        const int r = r0 + p * RPP;
        const bool ok = row0 + r < limit;
        const T* src = g + (size_t)(ok ? row0 + r : 0) * row_stride;
        const u32 dst = smem_u32(s + r * STR);
#pragma unroll
        for (int k = 0; k < (CH + TPR - 1) / TPR; ++k) {
            const int c = c0 + k * TPR;
            if (c < CH) cp_async16(dst + c * 16, src + c * 8, ok);
        }
    }
}


// ---- mma.sync building blocks of one warp (16 * MT query rows; shared-memory rows STR elements apart) ----

// Q fragments (A operand of QK^T) of this warp's rows sQw[0 .. 16 * MT) into registers: K16 k16-steps plus,
// for D % 16 = 8, one k8 tail.
template <typename T, int D, int STR, int MT>
__device__ __forceinline__ void load_q_frags(u32 (&qf)[MT][D / 16][4], u32 (&qt)[MT][2], const T* sQw, int lane) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const T* qrow = sQw + (mt * 16 + (lane & 15)) * STR;
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) ldsm_x4(qf[mt][ks], smem_u32(qrow + ks * 16 + (lane >> 4) * 8));
        if (D % 16) ldsm_x2(qt[mt], smem_u32(qrow + (D / 16) * 16));
    }
}

// S = Q K^T (fp32) for BN = 8 * NB keys Ks[0 .. BN). Q comes from qf/qt (QREG) or from sQw in shared memory.
template <typename T, int D, int STR, int MT, int NB, bool QREG>
__device__ __forceinline__ void qk_tile(float (&s)[MT][NB][4], const u32 (&qf)[QREG ? MT : 1][QREG ? D / 16 : 1][4],
                                        const u32 (&qt)[QREG ? MT : 1][2], const T* sQw, const T* Ks, int lane) {
    constexpr int K16 = D / 16;            // m16n8k16 k-steps
    constexpr bool TAIL8 = (D % 16) != 0;  // one m16n8k8 step for the last 8 columns (D = 72)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) s[mt][nb][0] = s[mt][nb][1] = s[mt][nb][2] = s[mt][nb][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < K16; ++ks) {
        u32 a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            if (QREG) {
                a[mt][0] = qf[mt][ks][0]; a[mt][1] = qf[mt][ks][1];
                a[mt][2] = qf[mt][ks][2]; a[mt][3] = qf[mt][ks][3];
            } else {
                ldsm_x4(a[mt], smem_u32(sQw + (mt * 16 + (lane & 15)) * STR + ks * 16 + (lane >> 4) * 8));
            }
        }
#pragma unroll
        for (int nb = 0; nb < NB; nb += 2) {
            u32 b[4];
            ldsm_x4(b, smem_u32(Ks + (nb * 8 + (lane & 7) + ((lane >> 4) << 3)) * STR + ks * 16 +
                                (((lane >> 3) & 1) << 3)));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                Mma<T>::k16(s[mt][nb], a[mt], b[0], b[1]);
                Mma<T>::k16(s[mt][nb + 1], a[mt], b[2], b[3]);
            }
        }
    }
    if (TAIL8) {  // columns K16*16 .. D-1 (8 of them) with m16n8k8
        u32 at[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            if (QREG) { at[mt][0] = qt[mt][0]; at[mt][1] = qt[mt][1]; }
            else ldsm_x2(at[mt], smem_u32(sQw + (mt * 16 + (lane & 15)) * STR + K16 * 16));
        }
#pragma unroll
        for (int nb = 0; nb < NB; nb += 4) {
            if (nb + 4 <= NB) {
                u32 b[4];
                ldsm_x4(b, smem_u32(Ks + (nb * 8 + lane) * STR + K16 * 16));
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int i = 0; i < 4; ++i) Mma<T>::k8(s[mt][nb + i], at[mt][0], at[mt][1], b[i]);
            } else {
                u32 b[2];
                ldsm_x2(b, smem_u32(Ks + (nb * 8 + (lane & 15)) * STR + K16 * 16));
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int i = 0; i < 2; ++i) Mma<T>::k8(s[mt][nb + i], at[mt][0], at[mt][1], b[i]);
            }
        }
    }
}

// O += P V for the 16 keys kb2*16 .. kb2*16+15 of the V tile Vs (DB = D / 8 n-blocks of O).
template <typename T, int STR, int MT, int DB>
__device__ __forceinline__ void pv_step(float (&acc)[MT][DB][4], const u32 (&pa)[MT][4], const T* Vs, int kb2,
                                        int lane) {
    const T* vrow = Vs + (kb2 * 16 + (lane & 7) + (((lane >> 3) & 1) << 3)) * STR;
#pragma unroll
    for (int db = 0; db + 1 < DB; db += 2) {
        u32 b[4];
        ldsm_x4_t(b, smem_u32(vrow + db * 8 + ((lane >> 4) << 3)));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            Mma<T>::k16(acc[mt][db], pa[mt], b[0], b[1]);
            Mma<T>::k16(acc[mt][db + 1], pa[mt], b[2], b[3]);
        }
    }
    if (DB % 2) {
        u32 b[2];
        ldsm_x2_t(b, smem_u32(vrow + (DB - 1) * 8));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) Mma<T>::k16(acc[mt][DB - 1], pa[mt], b[0], b[1]);
    }
}

template <typename T, int D, int NW, int MT, int BN, bool CAUSAL, bool QREG, int MINB>
__global__ void __launch_bounds__(NW * 32, MINB)
attn_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
         float* __restrict__ lse, const int* __restrict__ cu, int nseg, int Hq, int Hkv, float scale_log2) {
    constexpr int BM = 16 * MT * NW;  // query rows per CTA
    constexpr int NT = NW * 32;
    constexpr int CH = D / 8;                         // 16-byte chunks per row
    constexpr int STR = ((CH % 2) ? CH : CH + 1) * 8;  // smem row stride (elements): odd chunk count
    constexpr int K16 = D / 16;                       // m16n8k16 k-steps of QK^T (+ a k8 tail for D = 72)
    constexpr int NB = BN / 8;                        // n-blocks of S per warp row block
    constexpr int DB = D / 8;                         // n-blocks of O
    static_assert(D % 8 == 0 && BN % 16 == 0, "tile shape");
    const float NEG_INF = f32_neg_inf();

    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* sQ = reinterpret_cast<T*>(smem_raw);
    T* sK = sQ + BM * STR;        // 2 stages
    T* sV = sK + 2 * BN * STR;    // 2 stages
    __shared__ int s_map[2];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int head = blockIdx.x % Hq;
    int tile = blockIdx.x / Hq;
    if (CAUSAL) tile = gridDim.x / Hq - 1 - tile;  // longest (last) tiles first

    if (warp == 0) find_tile(cu, nseg, tile, lane, s_map, BM);
    __syncthreads();
    const int seg = s_map[0];
    if (seg < 0) return;  // past the last tile (the grid is an upper bound)
    const int q0 = s_map[1] * BM;  // first query row of the tile, local to the segment
    const int seg_start = cu[seg];
    const int L = cu[seg + 1] - seg_start;
    const int kvh = head / (Hq / Hkv);
    const size_t q_rs = (size_t)Hq * D, kv_rs = (size_t)Hkv * D;
    const T* qb = q + (size_t)seg_start * q_rs + (size_t)head * D;
    const T* kb = k + (size_t)seg_start * kv_rs + (size_t)kvh * D;
    const T* vb = v + (size_t)seg_start * kv_rs + (size_t)kvh * D;
    const int kv_len = CAUSAL ? min(L, q0 + BM) : L;
    const int n_kv = (kv_len + BN - 1) / BN;

    // ---- prologue: Q and the first K/V tile ----
    load_tile<T, D, STR, BM, NT>(sQ, qb, q_rs, q0, L, tid);
    load_tile<T, D, STR, BN, NT>(sK, kb, kv_rs, 0, kv_len, tid);
    load_tile<T, D, STR, BN, NT>(sV, vb, kv_rs, 0, kv_len, tid);
    cp_async_commit();

    const int wr = warp * 16 * MT;  // first row of this warp inside the tile
    const int wrow0 = q0 + wr;      // ... local to the segment
    const bool warp_active = wrow0 < L;
    const int g = lane >> 2, t4 = lane & 3;

    float m_i[MT][2], l_i[MT][2];
    float acc[MT][DB][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        m_i[mt][0] = m_i[mt][1] = NEG_INF;
        l_i[mt][0] = l_i[mt][1] = 0.f;
#pragma unroll
        for (int db = 0; db < DB; ++db) acc[mt][db][0] = acc[mt][db][1] = acc[mt][db][2] = acc[mt][db][3] = 0.f;
    }
    u32 qf[QREG ? MT : 1][QREG ? K16 : 1][4];
    u32 qt[QREG ? MT : 1][2];

    for (int j = 0; j < n_kv; ++j) {
        const int st = j & 1;
        if (j + 1 < n_kv) {
            load_tile<T, D, STR, BN, NT>(sK + (st ^ 1) * BN * STR, kb, kv_rs, (j + 1) * BN, kv_len, tid);
            load_tile<T, D, STR, BN, NT>(sV + (st ^ 1) * BN * STR, vb, kv_rs, (j + 1) * BN, kv_len, tid);
        }
        cp_async_commit();
        cp_async_wait<1>();  // everything but the tile just issued has landed
        __syncthreads();

        const int kv0 = j * BN;
        if constexpr (QREG) {
            if (j == 0 && warp_active) load_q_frags<T, D, STR, MT>(qf, qt, sQ + wr * STR, lane);
        }
        // a warp whose rows all precede this key tile (causal) or lie past the segment has nothing to do
        const bool skip = !warp_active || (CAUSAL && kv0 > wrow0 + 16 * MT - 1);
        if (!skip) {
            const T* Vs = sV + st * BN * STR;
            float s[MT][NB][4];
            qk_tile<T, D, STR, MT, NB, QREG>(s, qf, qt, sQ + wr * STR, sK + st * BN * STR, lane);
            mask_tile<MT, NB, CAUSAL>(s, wrow0, kv0, L, g, t4);
            softmax_update<MT, NB, DB>(s, acc, m_i, l_i, scale_log2);
#pragma unroll
            for (int kb2 = 0; kb2 < BN / 16; ++kb2) {
                u32 pa[MT][4];
                pack_p<T, MT, NB>(pa, s, kb2);
                pv_step<T, STR, MT, DB>(acc, pa, Vs, kb2, lane);
            }
        }
        __syncthreads();  // the stage just read is overwritten by the next iteration's loads
    }
    cp_async_wait<0>();

    if (warp_active) store_rows<T, MT, DB, D>(acc, m_i, l_i, o, lse, seg_start, wrow0, L, Hq, head, g, t4);
}

}  // namespace attn
