// Gated DeltaNet (gated delta rule) kernels: the chunked prefill on tensor cores and the recurrent step.
//
// Per sequence and value head h (key head kh = h / (Hv / Hk)), state S [dk = 128, dv = 128] fp32:
//   S = exp(g_t) S;  S += k_t (x) beta_t (v_t - S^T k_t);  o_t = S^T q_t        (reference/deltanet.py)
// with q, k l2-normalised (when asked) and q scaled. Layouts: q, k [T, Hk, 128], v and o [T, Hv, 128] with any
// token stride (rows of one [T, C] tensor) and heads contiguous; g, beta fp32 [T, Hv] contiguous; states fp32
// [n, Hv, 128, 128]; cu_seqlens int32 [n + 1]. The l2 norms are never applied to the 16-bit inputs: every kernel
// multiplies the raw products by 1/||q|| and 1/||k|| in fp32 (one rounding less than normalising first).
//
// Chunked prefill, two kernels (chunks of BT = 64 tokens, the algebra of reference.chunked_gated_delta_rule):
//  gdn_chunk_prep  (one CTA per chunk and value head, fully parallel): G = cumsum(g), A = strictly lower
//      beta_i exp(G_i - G_j) k_i.k_j, T = (I + A)^-1 (fp32, 16x16 diagonal blocks by warps, then block rows),
//      W = T diag(beta exp(G)) K and U = T diag(beta) V (mma.sync), and the masked, decayed, scaled Q K^T
//      (Aqk). Written per token: W, U [T, Hv, 128], Aqk [T, Hv, 64] in the input dtype; G, 1/||q|| * scale,
//      1/||k|| [Hv, T] fp32 (head-major, so the state pass reads a chunk's rows as one run).
//  gdn_chunk_state (one CTA per sequence, value head and BV-column block of dv; chunks in order, the inputs of
//      the next NS - 1 chunks in flight (cp.async) during the current one): with S0 the state entering the chunk,
//        Vn = U - W S0;  O = diag(exp(G) rq) Q S0 + Aqk Vn;  S = exp(G_L) S0 + K^T diag(exp(G_L - G) rk) Vn
//      S stays in fp32 registers; it is rounded to the input dtype only as an mma operand.
// Recurrent kernel gdn_recurrent (decode: one token per sequence; also the fp32 path): one CTA per sequence,
// value head and BV columns, the state slice in registers, one pass over S per token for both S^T k and S^T q:
//   u = a S^T k, delta = beta (v - u), o = a S^T q + (k.q) delta, S = a S + k delta^T   (a = exp(g)).
// States may be updated in place (final_state aliasing initial_state): each CTA reads its slice before writing it.
#include "include/convert.cuh"
#include "include/cp_async.cuh"
#include "include/mbarrier.cuh"
#include "include/tma.cuh"
#include "include/mma_sm80.cuh"
#include "include/ptx.cuh"
#include "include/reduce.cuh"
#include "include/varlen.cuh"

namespace deltanet {
using namespace qkern;

constexpr int D = 128;      // dk = dv
constexpr int BT = 64;      // chunk length
constexpr int SD = D + 8;   // shared row stride of 128-wide tiles (17 16-byte chunks: conflict-free ldmatrix)
constexpr int SC = BT + 8;  // shared row stride of 64-wide tiles (9 chunks)
constexpr int SA = BT + 1;  // fp32 [64][65] matrix for the triangular solve
constexpr float L2_EPS = 1e-6f;

// Copy rows [0, L) of a [*, 128] 16-bit matrix (row r at src + r * stride) into shared memory, zero-filling
// rows L .. 63 (never read from global memory).
template <typename T, int NT = 128>
__device__ __forceinline__ void load_rows128(T* s, const T* src, long long stride, int L, int tid) {
#pragma unroll
    for (int i = tid; i < BT * (D / 8); i += NT) {
        const int r = i >> 4, c = (i & 15) * 8;
        const bool ok = r < L;
        cp_async16(smem_u32(s + r * SD + c), src + (ok ? (long long)r * stride : 0) + c, ok);
    }
}

// C[16 x 8 NB] += A (16 x 16 KS, row-major in shared, row stride LDA) * B where B[k][n] is stored as Bt[n][k]
// (row stride LDB): the Q K^T form.
template <typename T, int KS, int NB, int LDA, int LDB>
__device__ __forceinline__ void mma_abt(float (&c)[NB][4], const T* a, const T* bt, int lane) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
        u32 af[4];
        ldsm_x4(af, smem_u32(a + (lane & 15) * LDA + ks * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int nb = 0; nb < NB; nb += 2) {
            u32 bf[4];
            ldsm_x4(bf, smem_u32(bt + (nb * 8 + (lane & 7) + ((lane >> 4) << 3)) * LDB + ks * 16 + ((lane >> 3) & 1) * 8));
            Mma<T>::k16(c[nb], af, bf[0], bf[1]);
            Mma<T>::k16(c[nb + 1], af, bf[2], bf[3]);
        }
    }
}

// C[16 x 8 NB] += A (16 x 16 KS, row-major, stride LDA) * B (16 KS x 8 NB, row-major [k][n], stride LDB).
template <typename T, int KS, int NB, int LDA, int LDB>
__device__ __forceinline__ void mma_ab(float (&c)[NB][4], const T* a, const T* b, int lane) {
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
        u32 af[4];
        ldsm_x4(af, smem_u32(a + (lane & 15) * LDA + ks * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int nb = 0; nb < NB; nb += 2) {
            u32 bf[4];
            ldsm_x4_t(bf, smem_u32(b + (ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDB + nb * 8 + (lane >> 4) * 8));
            Mma<T>::k16(c[nb], af, bf[0], bf[1]);
            Mma<T>::k16(c[nb + 1], af, bf[2], bf[3]);
        }
    }
}

// mma_ab with KS even and two accumulator sets (even and odd k-steps) summed at the end: half the dependent mma
// chain, for the state pass's W S and Q S where NB is small (few independent chains per warp; from NB = 8 on
// there are enough, and the extra set would cost 32 registers).
template <typename T, int KS, int NB, int LDA, int LDB>
__device__ __forceinline__ void mma_ab2(float (&c)[NB][4], const T* a, const T* b, int lane) {
    if constexpr (NB >= 8) {
        mma_ab<T, KS, NB, LDA, LDB>(c, a, b, lane);
        return;
    }
    float c2[NB][4];
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) c2[nb][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
        u32 af[4];
        ldsm_x4(af, smem_u32(a + (lane & 15) * LDA + ks * 16 + (lane >> 4) * 8));
#pragma unroll
        for (int nb = 0; nb < NB; nb += 2) {
            u32 bf[4];
            ldsm_x4_t(bf, smem_u32(b + (ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDB + nb * 8 + (lane >> 4) * 8));
            if (ks & 1) {
                Mma<T>::k16(c2[nb], af, bf[0], bf[1]);
                Mma<T>::k16(c2[nb + 1], af, bf[2], bf[3]);
            } else {
                Mma<T>::k16(c[nb], af, bf[0], bf[1]);
                Mma<T>::k16(c[nb + 1], af, bf[2], bf[3]);
            }
        }
    }
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) c[nb][e] += c2[nb][e];
}

// C[16 x 8 NB] += A * B with A[m][k] stored transposed as At[k][m] (stride LDA; the K^T of K [token][dk]) and
// B row-major [k][n] (stride LDB); KS k-steps of 16.
template <typename T, int KS, int NB, int LDA, int LDB>
__device__ __forceinline__ void mma_atb(float (&c)[NB][4], const T* at, const T* b, int lane) {
    const int id = lane >> 3;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
        u32 af[4];
        ldsm_x4_t(af, smem_u32(at + (ks * 16 + (lane & 7) + ((id >> 1) << 3)) * LDA + ((id & 1) << 3)));
#pragma unroll
        for (int nb = 0; nb < NB; nb += 2) {
            u32 bf[4];
            ldsm_x4_t(bf, smem_u32(b + (ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDB + nb * 8 + (lane >> 4) * 8));
            Mma<T>::k16(c[nb], af, bf[0], bf[1]);
            Mma<T>::k16(c[nb + 1], af, bf[2], bf[3]);
        }
    }
}

// 4-byte global -> shared copy (cp.async.ca: the only form for sizes below 16); when !valid nothing is read and
// the 4 bytes are zero-filled.
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0) : "memory");
}

template <typename T>
__device__ __forceinline__ void store2(T* p, float a, float b) {
    *reinterpret_cast<u32*>(p) = pack2<T>(a, b);
}

// The gate inputs of one (token, value head) at flat index idx = t * Hv + h. GATE: from the raw projections,
// g = -exp(A_log[h]) softplus(a + dt_bias[h]) (torch's softplus: x past 20 is kept as is), beta = sigmoid(b)
// (reference.gdn_gates, in fp32); else g and beta as given (fp32).
template <typename T, bool GATE>
struct Gates {
    const float* g;
    const float* beta;
    const T* a;
    const T* b;
    const float* A_log;
    const float* dt_bias;
    __device__ __forceinline__ float gate(long long idx, int h) const {
        if (!GATE) return g[idx];
        const float x = to_f(a[idx]) + dt_bias[h];
        return -expf(A_log[h]) * (x > 20.f ? x : log1pf(expf(x)));
    }
    __device__ __forceinline__ float strength(long long idx) const {
        if (!GATE) return beta[idx];
        return 1.f / (1.f + expf(-to_f(b[idx])));
    }
};

// ---------------------------------------------------------------------------------------------------------------
// gdn_chunk_prep
// ---------------------------------------------------------------------------------------------------------------
// CMP (compact): the scaled T operands are written over A once the solve is done (their 18 KB replace A's 16.6
// KB): 53 KB of shared memory instead of 69, four CTAs an SM instead of three (102 registers either way).
constexpr int PREP_A_BYTES_CMP = 2 * BT * SC * 2;  // >= BT * SA * 4
template <typename T, bool GATE, bool CMP>
__global__ void __launch_bounds__(128) gdn_chunk_prep(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const float* g, const float* beta,
    const T* ga, const T* gb, const float* A_log, const float* dt_bias, const int* __restrict__ cu, int nseg,
    long long sq, long long sk,
    long long sv, int Hk, int Hv, float scale, int l2norm, T* __restrict__ w_out, T* __restrict__ u_out,
    T* __restrict__ aqk_out, float* __restrict__ g_out, float* __restrict__ rq_out, float* __restrict__ rk_out,
    int ntok) {
    extern __shared__ __align__(16) unsigned char smem[];
    T* sQ = reinterpret_cast<T*>(smem);
    T* sK = sQ + BT * SD;
    T* sV = sQ;             // V is loaded over Q once Q K^T is done (3 CTAs an SM fit in shared memory)
    float* sA = CMP ? reinterpret_cast<float*>(sK + BT * SD)  // A, then T = (I + A)^-1 in place
                    : reinterpret_cast<float*>(sK + BT * SD + 2 * BT * SC);
    T* sTk = CMP ? reinterpret_cast<T*>(sA) : sK + BT * SD;  // T diag(beta exp(G) rk), the A operand of W
    T* sTv = sTk + BT * SC;  // T diag(beta), the A operand of U
    float* sG = CMP ? sA + PREP_A_BYTES_CMP / 4 : sA + BT * SA;
    float* sB = sG + BT;
    float* sRq = sB + BT;
    float* sRk = sRq + BT;
    __shared__ int s_map[2];
    const Gates<T, GATE> gates{g, beta, ga, gb, A_log, dt_bias};

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = blockIdx.x, kh = h / (Hv / Hk);
    if (warp == 0) find_tile(cu, nseg, blockIdx.y, lane, s_map, BT);
    __syncthreads();
    const int seg = s_map[0];
    if (seg < 0) return;
    const int c0 = cu[seg] + s_map[1] * BT;
    const int L = min(BT, cu[seg + 1] - c0);

    load_rows128(sQ, q + (long long)c0 * sq + kh * D, sq, L, tid);
    load_rows128(sK, k + (long long)c0 * sk + kh * D, sk, L, tid);
    cp_async_commit();
    // cumulative log-decay G over the chunk (warp 0: two rows a lane, a warp-wide inclusive scan)
    if (warp == 0) {
        const int r = 2 * lane;
        const float g0 = r < L ? gates.gate((long long)(c0 + r) * Hv + h, h) : 0.f;
        const float g1 = r + 1 < L ? gates.gate((long long)(c0 + r + 1) * Hv + h, h) : 0.f;
        float inc = g0 + g1;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            const float y = __shfl_up_sync(0xffffffffu, inc, off);
            if (lane >= off) inc += y;
        }
        const float exc = inc - (g0 + g1);
        sG[r] = exc + g0;
        sG[r + 1] = exc + g0 + g1;
    } else if (warp == 1) {
#pragma unroll
        for (int r = lane; r < BT; r += 32) sB[r] = r < L ? gates.strength((long long)(c0 + r) * Hv + h) : 0.f;
    }
    cp_async_wait<0>();
    __syncthreads();
    // 1/||q|| * scale and 1/||k|| per row: two threads a row, 64 columns each
    {
        const int r = tid >> 1, c = (tid & 1) * 64;
        float qq = 0.f, kk = 0.f;
#pragma unroll
        for (int j = 0; j < 64; j += 8) {  // 16-byte shared loads
            float a[8], b[8];
            load_f<T, 8>(sQ + r * SD + c + j, a);
            load_f<T, 8>(sK + r * SD + c + j, b);
#pragma unroll
            for (int x = 0; x < 8; ++x) {
                qq += a[x] * a[x];
                kk += b[x] * b[x];
            }
        }
        qq += __shfl_xor_sync(0xffffffffu, qq, 1);
        kk += __shfl_xor_sync(0xffffffffu, kk, 1);
        if ((tid & 1) == 0) {
            sRq[r] = (l2norm ? rsqrtf(qq + L2_EPS) : 1.f) * scale;
            sRk[r] = l2norm ? rsqrtf(kk + L2_EPS) : 1.f;
        }
    }
    __syncthreads();

    const int gq = lane >> 2, t4 = lane & 3;
    const int m0 = warp * 16;
    {
        // K K^T and Q K^T for rows m0 .. m0 + 15 (all 64 columns; those right of the diagonal are masked)
        float kk[8][4], qk[8][4];
#pragma unroll
        for (int nb = 0; nb < 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) kk[nb][e] = qk[nb][e] = 0.f;
        mma_abt<T, 8, 8, SD, SD>(kk, sK + m0 * SD, sK, lane);
        mma_abt<T, 8, 8, SD, SD>(qk, sQ + m0 * SD, sK, lane);
#pragma unroll
        for (int nb = 0; nb < 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int i = m0 + gq + (e ? 8 : 0);
                const float Gi = sG[i], bi = sB[i] * sRk[i], qi = sRq[i];
                float av[2], qv[2];
#pragma unroll
                for (int u = 0; u < 2; ++u) {
                    const int j = nb * 8 + 2 * t4 + u;
                    const float dec = j <= i ? __expf(Gi - sG[j]) : 0.f;  // masked before exp: no overflow
                    av[u] = j < i ? bi * dec * sRk[j] * kk[nb][e + u] : 0.f;
                    qv[u] = qi * dec * sRk[j] * qk[nb][e + u];
                    sA[i * SA + j] = av[u];
                }
                if (i < L) store2(aqk_out + ((long long)(c0 + i) * Hv + h) * BT + nb * 8 + 2 * t4, qv[0], qv[1]);
            }
    }
    __syncthreads();
    load_rows128(sV, v + (long long)c0 * sv + h * D, sv, L, tid);  // in flight during the solve
    cp_async_commit();

    // T = (I + A)^-1. Diagonal 16x16 blocks: warp w inverts block w by forward elimination, lane = column c
    // (lanes 0-15 hold rows 0-7 of the block, lanes 16-31 rows 8-15).
    {
        const int c = lane & 15, hh = lane >> 4, b0 = warp * 16;
        float R[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) R[i] = (8 * hh + i == c) ? 1.f : 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const float rj = __shfl_sync(0xffffffffu, R[j & 7], c + 16 * (j >> 3));
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int row = 8 * hh + i;
                if (row > j) R[i] -= sA[(b0 + row) * SA + b0 + j] * rj;
            }
        }
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 8; ++i) sA[(b0 + 8 * hh + i) * SA + b0 + c] = R[i];
    }
    __syncthreads();
    // block rows 1..3: X_ij = sum_{m = j .. i-1} A_im T_mj (j < i), then T_ij = -T_ii X_ij. Warp j < i computes
    // block (i, j) in registers, lane = column c (lanes 0-15 rows 0-7, lanes 16-31 rows 8-15: 8 independent
    // sums a lane); X's other half-rows come by shuffle. A barrier between reading the block row (all warps)
    // and overwriting it with T, and one before the next block row reads it.
#pragma unroll
    for (int bi = 1; bi < 4; ++bi) {
        const int c = lane & 15, hh = lane >> 4, r0 = 16 * bi, j = warp;
        float X[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) X[i] = 0.f;
        if (j < bi) {
            for (int mb = j; mb < bi; ++mb) {
#pragma unroll
                for (int mm = 0; mm < 16; ++mm) {
                    const int m = 16 * mb + mm;
                    const float tm = sA[m * SA + 16 * j + c];
#pragma unroll
                    for (int i = 0; i < 8; ++i) X[i] += sA[(r0 + 8 * hh + i) * SA + m] * tm;
                }
            }
        }
        float Y[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) Y[i] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 16; ++kk) {  // every lane shuffles (full mask); only warps j < bi use the result
            const float xk = __shfl_sync(0xffffffffu, X[kk & 7], c + 16 * (kk >> 3));
#pragma unroll
            for (int i = 0; i < 8; ++i) Y[i] += sA[(r0 + 8 * hh + i) * SA + r0 + kk] * xk;
        }
        __syncthreads();
        if (j < bi) {
#pragma unroll
            for (int i = 0; i < 8; ++i) sA[(r0 + 8 * hh + i) * SA + 16 * j + c] = -Y[i];
        }
        __syncthreads();
    }
    // the two A operands, columns scaled (entries right of the diagonal are 0); a thread keeps one column j
    {
        const int j = tid & 63;
        const float fv = sB[j], fk = fv * __expf(sG[j]) * sRk[j];
        if constexpr (CMP) {  // in place: every read of T before the first write over it
            float t[BT / 2];
#pragma unroll
            for (int x = 0; x < BT / 2; ++x) {
                const int i = (tid >> 6) + 2 * x;
                t[x] = j <= i ? sA[i * SA + j] : 0.f;
            }
            __syncthreads();
#pragma unroll
            for (int x = 0; x < BT / 2; ++x) {
                const int i = (tid >> 6) + 2 * x;
                sTk[i * SC + j] = from_f<T>(t[x] * fk);
                sTv[i * SC + j] = from_f<T>(t[x] * fv);
            }
        } else {
#pragma unroll 4
            for (int i = tid >> 6; i < BT; i += 2) {
                const float t = j <= i ? sA[i * SA + j] : 0.f;
                sTk[i * SC + j] = from_f<T>(t * fk);
                sTv[i * SC + j] = from_f<T>(t * fv);
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();
    {
        float acc[16][4];
#pragma unroll
        for (int nb = 0; nb < 16; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nb][e] = 0.f;
        mma_ab<T, 4, 16, SC, SD>(acc, sTk + m0 * SC, sK, lane);
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
            const int i = m0 + gq + (e ? 8 : 0);
            if (i < L) {
                T* dst = w_out + ((long long)(c0 + i) * Hv + h) * D + 2 * t4;
#pragma unroll
                for (int nb = 0; nb < 16; ++nb) store2(dst + nb * 8, acc[nb][e], acc[nb][e + 1]);
            }
        }
#pragma unroll
        for (int nb = 0; nb < 16; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nb][e] = 0.f;
        mma_ab<T, 4, 16, SC, SD>(acc, sTv + m0 * SC, sV, lane);
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
            const int i = m0 + gq + (e ? 8 : 0);
            if (i < L) {
                T* dst = u_out + ((long long)(c0 + i) * Hv + h) * D + 2 * t4;
#pragma unroll
                for (int nb = 0; nb < 16; ++nb) store2(dst + nb * 8, acc[nb][e], acc[nb][e + 1]);
            }
        }
    }
    if (tid < L) {
        const long long o = (long long)h * ntok + c0 + tid;  // head-major: a chunk's rows are contiguous
        g_out[o] = sG[tid];
        rq_out[o] = sRq[tid];
        rk_out[o] = sRk[tid];
    }
}

// ---------------------------------------------------------------------------------------------------------------
// gdn_chunk_state
// ---------------------------------------------------------------------------------------------------------------
template <int BV, int NS>
struct StateLayout {
    static constexpr int SU = BV + 8;  // row stride of BV-wide tiles (odd number of 16-byte chunks)
    // one stage: W, Q, K [64][SD]; U [64][SU]; Aqk [64][SC] (16-bit) then G, rq, rk [64] (fp32)
    static constexpr int STAGE_T = 3 * BT * SD + BT * SU + BT * SC;
    static constexpr int STAGE_BYTES = STAGE_T * 2 + 3 * BT * 4;
    // after the NS stages: S [128][SU], Vn and the scaled Vn [64][SU] (16-bit)
    static constexpr int BYTES = NS * STAGE_BYTES + (D * SU + 2 * BT * SU) * 2;
};

// 8 warps. In each chunk warps 0-3 compute Vn = U - W S for token rows 16w .. 16w+15 (and publish Vn), then
// the state update of dk rows 32w .. 32w+31 (they hold S); warps 4-7 compute Q S for token rows 16(w-4) .. and
// then the outputs (adding Aqk Vn).
//
// CL > 1 (sm_90a, gdn_chunk_state_mc): the CL CTAs of a cluster are consecutive dv blocks of one head and
// sequence, and share the chunk's W, Q, K and Aqk rows: each CTA copies 1/CL of the rows with bulk copies
// multicast into every CTA's shared memory (one L2 read instead of CL), completing each CTA's `full` mbarrier of
// the stage; U and G, rq, rk stay per-CTA cp.async copies. A stage is refilled only after every CTA of the
// cluster is done with it: each thread arrives on the cluster barrier after its last read of a chunk and waits
// (long after, in the next chunk's second phase) before the refill is issued. Rows past a sequence's end are not
// copied: they keep the zeros written at the start, or finite rows of an earlier chunk, whose products are
// multiplied by exact zeros (rk and G are zero-filled there, and Aqk is zero right of the diagonal).
__device__ __forceinline__ void cluster_arrive() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
    asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
// bytes (a multiple of 16) from global src to shared dst in every CTA of the cluster in mask, completing the
// mbarrier at the same offset in each of them
__device__ __forceinline__ void bulk_copy_mc(unsigned dst, const void* src, unsigned bytes, unsigned bar,
                                             unsigned short mask) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster "
                 "[%0], [%1], %2, [%3], %4;\n" ::"r"(dst), "l"(src), "r"(bytes), "r"(bar), "h"(mask) : "memory");
#endif
}

template <typename T, int BV, int NS, int CL>
__device__ __forceinline__ void chunk_state_body(
    const T* __restrict__ q, const T* __restrict__ k, long long sq, long long sk, int Hk, int Hv,
    const T* __restrict__ w, const T* __restrict__ u, const T* __restrict__ aqk, const float* __restrict__ gc,
    const float* __restrict__ rq, const float* __restrict__ rk, const int* __restrict__ cu,
    const float* h0, float* hT, T* __restrict__ o, long long so, int ntok) {
    using Lay = StateLayout<BV, NS>;
    constexpr int SU = Lay::SU, NB = BV / 8, NT = 256;
    extern __shared__ __align__(16) unsigned char smem[];
    T* sS = reinterpret_cast<T*>(smem + NS * Lay::STAGE_BYTES);
    T* sVn = sS + D * SU;
    T* sVs = sVn + BT * SU;
    unsigned long long* full = reinterpret_cast<unsigned long long*>(smem + Lay::BYTES);  // CL > 1: [NS]

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, t4 = lane & 3;
    const int vb = blockIdx.x * BV, h = blockIdx.y, s = blockIdx.z, kh = h / (Hv / Hk);
    const int bos = cu[s], eos = cu[s + 1];
    const int nchunks = (eos - bos + BT - 1) / BT;

    auto stage_ptr = [&](int st) { return smem + st * Lay::STAGE_BYTES; };
    auto issue = [&](int c) {  // cp.async loads of chunk c into stage c % NS
        unsigned char* base = stage_ptr(c % NS);
        T* sW = reinterpret_cast<T*>(base);
        T* sQ = sW + BT * SD;
        T* sK = sQ + BT * SD;
        T* sU = sK + BT * SD;
        T* sAq = sU + BT * SU;
        float* sG = reinterpret_cast<float*>(sAq + BT * SC);
        const int t0 = bos + c * BT, L = min(BT, eos - t0);
        const long long hv = (long long)Hv * D;
        if constexpr (CL == 1) {
            load_rows128<T, NT>(sW, w + (long long)t0 * hv + h * D, hv, L, tid);
            load_rows128<T, NT>(sQ, q + (long long)t0 * sq + kh * D, sq, L, tid);
            load_rows128<T, NT>(sK, k + (long long)t0 * sk + kh * D, sk, L, tid);
        }
        constexpr int UCH = BV / 8;  // 16-byte chunks of a U row
        for (int i = tid; i < BT * UCH; i += NT) {
            const int r = i / UCH, cc = (i % UCH) * 8;
            const bool ok = r < L;
            cp_async16(smem_u32(sU + r * SU + cc), u + ((long long)(t0 + (ok ? r : 0)) * Hv + h) * D + vb + cc, ok);
        }
        if constexpr (CL == 1) {
            for (int i = tid; i < BT * 8; i += NT) {
                const int r = i >> 3, cc = (i & 7) * 8;
                const bool ok = r < L;
                cp_async16(smem_u32(sAq + r * SC + cc), aqk + ((long long)(t0 + (ok ? r : 0)) * Hv + h) * BT + cc, ok);
            }
        }
        if (tid < 3 * BT) {  // G, rq, rk of the chunk's rows ([Hv, T] fp32; rows past the end read as 0)
            const int arr = tid / BT, r = tid % BT;
            const float* src = (arr == 0 ? gc : arr == 1 ? rq : rk) + (long long)h * ntok + t0 + (r < L ? r : 0);
            cp_async4(smem_u32(sG + tid), src, r < L);
        }
    };
    // CL > 1: this CTA's share of chunk c's W, Q, K, Aqk rows, multicast (warp 0; lane 0 first sets the stage's
    // expected bytes: all CTAs' rows land here)
    const unsigned rank = CL > 1 ? cluster_rank() : 0;
    auto issue_mc = [&](int c) {
        if constexpr (CL > 1) {
            if (warp != 0) return;
            const int st = c % NS;
            unsigned char* base = stage_ptr(st);
            T* sW = reinterpret_cast<T*>(base);
            T* sQ = sW + BT * SD;
            T* sK = sQ + BT * SD;
            T* sAq = sK + BT * SD + BT * SU;
            const int t0 = bos + c * BT, L = min(BT, eos - t0);
            const unsigned bar = smem_u32(full + st);
            if (lane == 0) mbar_arrive_expect_tx(bar, (unsigned)L * (3 * D + BT) * 2);
            __syncwarp();
            constexpr int RPC = BT / CL;  // rows a CTA copies per matrix
            for (int it = lane; it < 4 * RPC; it += 32) {
                const int m = it / RPC, r = (it % RPC) * CL + rank;
                if (r >= L) continue;
                const long long tok = t0 + r;
                const T* src = m == 0 ? w + (tok * Hv + h) * D : m == 1 ? q + tok * sq + kh * D
                             : m == 2 ? k + tok * sk + kh * D : aqk + (tok * Hv + h) * BT;
                T* dst = m == 0 ? sW + r * SD : m == 1 ? sQ + r * SD : m == 2 ? sK + r * SD : sAq + r * SC;
                bulk_copy_mc(smem_u32(dst), src, m == 3 ? BT * 2 : D * 2, bar, (unsigned short)((1u << CL) - 1));
            }
        }
    };

    // The Vn warps (0-3) hold S: warp w rows 32 w + 16 mt + (gq, gq + 8), columns vb + nb*8 + 2 t4 (+1), the C
    // fragments of K^T Vn (the output warps have Aqk Vn and the stores in that phase instead).
    const bool vwarp = warp < 4;            // Vn warps (0-3) or output warps (4-7)
    float S[2][NB][4];
    const long long sbase = ((long long)s * Hv + h) * D * D + vb;
    const int srow = (warp & 3) * 32 + gq;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                float2 x = make_float2(0.f, 0.f);
                if (h0 && vwarp)
                    x = *reinterpret_cast<const float2*>(h0 + sbase + (long long)(srow + mt * 16 + (e ? 8 : 0)) * D +
                                                         nb * 8 + 2 * t4);
                S[mt][nb][e] = x.x;
                S[mt][nb][e + 1] = x.y;
            }

    const int m0 = (warp & 3) * 16;         // their token rows
    // S (rounded to T) into shared memory as the B operand [dk][dv] of W S and Q S
    auto publish_state = [&]() {
        if (!vwarp) return;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int nb = 0; nb < NB; ++nb)
#pragma unroll
                for (int e = 0; e < 4; e += 2)
                    store2(sS + (srow + mt * 16 + (e ? 8 : 0)) * SU + nb * 8 + 2 * t4, S[mt][nb][e], S[mt][nb][e + 1]);
    };
    // Two barriers a chunk. (A), at the top: chunk c's inputs and the published S are visible, and every read of
    // the previous chunk (its stage, sVn, sVs) is done, so that stage is refilled right after. (B): Vn is
    // visible. sS is rewritten after (B), when nobody reads it. NS - 1 chunks are in flight at (A) for NS >= 3
    // (one commit group per chunk, empty past the end).
    if constexpr (CL > 1) {
        // zero stages (rows past a sequence's end are never copied), the barriers, then the cluster in step
        for (int i = tid; i < NS * Lay::STAGE_BYTES / 16; i += NT)
            *reinterpret_cast<uint4*>(smem + 16 * i) = make_uint4(0u, 0u, 0u, 0u);
        if (tid == 0) {
            for (int st = 0; st < NS; ++st) mbar_init(smem_u32(full + st), 1);
            fence_mbarrier_init();
        }
        fence_proxy_async_shared();
        __syncthreads();
        cluster_arrive();
        cluster_wait();
    }
#pragma unroll
    for (int c = 0; c < NS - 1; ++c) {
        if (c < nchunks) {
            issue(c);
            issue_mc(c);
        }
        cp_async_commit();
    }
    if constexpr (CL > 1) cluster_arrive();
    publish_state();
    for (int c = 0; c < nchunks; ++c) {
        cp_async_wait<NS - 2>();  // this thread's copies of chunk c have landed
        if constexpr (CL > 1) mbar_wait(smem_u32(full + c % NS), (c / NS) & 1);  // and the multicast rows
        __syncthreads();          // (A)
        if (c + NS - 1 < nchunks) issue(c + NS - 1);  // into the stage chunk c - 1 used
        cp_async_commit();
        unsigned char* base = stage_ptr(c % NS);
        const T* sW = reinterpret_cast<const T*>(base);
        const T* sQ = sW + BT * SD;
        const T* sK = sQ + BT * SD;
        const T* sU = sK + BT * SD;
        const T* sAq = sU + BT * SU;
        const float* sG = reinterpret_cast<const float*>(sAq + BT * SC);
        const int t0 = bos + c * BT, L = min(BT, eos - t0);
        const float gl = sG[L - 1];  // G at the chunk's last row
        float acc[NB][4];
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nb][e] = 0.f;
        if (vwarp) {
            // Vn = U - W S; the scaled copy exp(G_L - G_i) rk_i Vn feeds the state update
            mma_ab2<T, 8, NB, SD, SU>(acc, sW + m0 * SD, sS, lane);
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int i = m0 + gq + (e ? 8 : 0);
                const float f = __expf(gl - sG[i]) * sG[2 * BT + i];
#pragma unroll
                for (int nb = 0; nb < NB; ++nb) {
                    const int cc = nb * 8 + 2 * t4;
                    const float x0 = to_f(sU[i * SU + cc]) - acc[nb][e];
                    const float x1 = to_f(sU[i * SU + cc + 1]) - acc[nb][e + 1];
                    store2(sVn + i * SU + cc, x0, x1);
                    store2(sVs + i * SU + cc, x0 * f, x1 * f);
                }
            }
        } else {
            mma_ab2<T, 8, NB, SD, SU>(acc, sQ + m0 * SD, sS, lane);  // Q S, kept for the outputs
        }
        __syncthreads();  // (B)
        if constexpr (CL > 1) {  // every CTA of the cluster is done with chunk c - 1: refill its stage
            cluster_wait();
            if (c + NS - 1 < nchunks) issue_mc(c + NS - 1);
        }
        if (!vwarp) {  // O = diag(exp(G) rq) Q S + Aqk Vn
            float o2[NB][4];
#pragma unroll
            for (int nb = 0; nb < NB; ++nb)
#pragma unroll
                for (int e = 0; e < 4; ++e) o2[nb][e] = 0.f;
            mma_ab<T, 4, NB, SC, SU>(o2, sAq + m0 * SC, sVn, lane);
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int i = m0 + gq + (e ? 8 : 0);
                if (i < L) {
                    const float f = __expf(sG[i]) * sG[BT + i];
                    T* dst = o + (long long)(t0 + i) * so + h * D + vb + 2 * t4;
#pragma unroll
                    for (int nb = 0; nb < NB; ++nb)
                        store2(dst + nb * 8, f * acc[nb][e] + o2[nb][e], f * acc[nb][e + 1] + o2[nb][e + 1]);
                }
            }
        }
        if (vwarp) {  // S = exp(G_L) S + K^T (scaled Vn), rows 32 w .. 32 w + 31 of dk
            const float dl = __expf(gl);
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
                for (int nb = 0; nb < NB; ++nb)
#pragma unroll
                    for (int e = 0; e < 4; ++e) S[mt][nb][e] *= dl;
                mma_atb<T, 4, NB, SD, SU>(S[mt], sK + (warp & 3) * 32 + mt * 16, sVs, lane);
            }
        }
        publish_state();
        if constexpr (CL > 1) cluster_arrive();  // this thread's reads of chunk c are done
    }
    cp_async_wait<0>();
    if constexpr (CL > 1) cluster_wait();  // no CTA leaves while another may still copy into it
    if (!vwarp) return;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 4; e += 2)
                *reinterpret_cast<float2*>(hT + sbase + (long long)(srow + mt * 16 + (e ? 8 : 0)) * D + nb * 8 + 2 * t4) =
                    make_float2(S[mt][nb][e], S[mt][nb][e + 1]);
}

// ---------------------------------------------------------------------------------------------------------------
// gdn_chunk_state_t: the state pass with the transposed state S^T held as mma fragments
// ---------------------------------------------------------------------------------------------------------------
// Every product is taken transposed, so that each result's accumulator layout is the A operand of the next one
// (the m16n8 C fragment packed in pairs is an A fragment). The CTA covers NC groups of 16 dv columns, each group
// split over KW warps by dk: warp (g, r) keeps S^T [16 dv x 128 / KW dk] (dv columns vb + 16 g .., dk from
// 128 r / KW) in fp32 registers and per chunk computes
//   its partial (W S)^T = S^T W^T and (Q S)^T = S^T Q^T over its dk (A = S^T from registers, B = W, Q rows by
//   ldmatrix); with KW > 1 the partials are exchanged in shared memory (fp32, [tile][lane] float4s: conflict-free)
//   and every warp of the group sums all of (W S)^T and its 64 / KW output tokens' (Q S)^T;
//   Vn^T = U^T - (W S)^T (U^T by ldmatrix.trans, in the C layout),
//   O^T = (Q S)^T diag(exp(G) rq) + Vn^T Aqk^T for its output tokens,
//   S^T = exp(G_L) S^T + Vn^T diag(exp(G_L - G) rk) K over its dk,
// with Vn^T never leaving registers. S and Vn are rounded to the input dtype only as mma operands, as in
// gdn_chunk_state. One barrier a chunk (the stage refill), two with KW > 1. Outputs go through a shared tile per
// column group (stmatrix) to 16-byte stores.
__device__ __forceinline__ void stsm_x4_t(unsigned addr, u32 r0, u32 r1, u32 r2, u32 r3) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1,%2,%3,%4};\n"
                 ::"r"(addr), "r"(r0), "r"(r1), "r"(r2), "r"(r3) : "memory");
}

template <typename T>
__device__ __forceinline__ float2 unpack2(u32 x) {
    const T* p = reinterpret_cast<const T*>(&x);
    return make_float2(to_f(p[0]), to_f(p[1]));
}

template <typename T, int NC, int KW, int NS>
__global__ void __launch_bounds__(32 * NC * KW) gdn_chunk_state_t(
    const T* __restrict__ q, const T* __restrict__ k, long long sq, long long sk, int Hk, int Hv,
    const T* __restrict__ w, const T* __restrict__ u, const T* __restrict__ aqk, const float* __restrict__ gc,
    const float* __restrict__ rq, const float* __restrict__ rk, const int* __restrict__ cu,
    const float* h0, float* hT, T* __restrict__ o, long long so, int ntok) {
    static_assert(KW == 1 || KW == 2 || KW == 4, "dk split");
    constexpr int BV = 16 * NC, NT = 32 * NC * KW, SO = 24;  // SO: row stride of the output tile (conflict-free)
    constexpr int NJ = 16 / KW, KSL = 8 / KW, OT = 8 / KW;    // dk tiles, dk k-steps, output token tiles a warp
    using Lay = StateLayout<BV, NS>;
    constexpr int SU = Lay::SU;
    extern __shared__ __align__(16) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, t4 = lane & 3;
    const int grp = warp / KW, part = warp % KW;
    const int vb = blockIdx.x * BV, h = blockIdx.y, s = blockIdx.z, kh = h / (Hv / Hk);
    const int vw = vb + 16 * grp, dk0 = part * (D / KW), ot0 = part * OT;
    float4* sP = reinterpret_cast<float4*>(smem + NS * Lay::STAGE_BYTES);  // KW > 1: [warp][2][8 tiles][32 lanes]
    T* sO = reinterpret_cast<T*>(sP + (KW > 1 ? NC * KW * 2 * 8 * 32 : 0)) + grp * BT * SO;
    const int bos = cu[s], eos = cu[s + 1];
    const int nchunks = (eos - bos + BT - 1) / BT;
    // ldmatrix / stmatrix row of this lane in a pair of 8-row tiles (lanes 16-31: the second tile) and its column
    // half (lanes 8-15, 24-31)
    const int lrow = (lane & 7) + ((lane >> 4) << 3), lcol = ((lane >> 3) & 1) * 8;

    auto issue = [&](int c) {  // cp.async loads of chunk c into stage c % NS (rows past the end zero-filled)
        unsigned char* base = smem + (c % NS) * Lay::STAGE_BYTES;
        T* sW = reinterpret_cast<T*>(base);
        T* sQ = sW + BT * SD;
        T* sK = sQ + BT * SD;
        T* sU = sK + BT * SD;
        T* sAq = sU + BT * SU;
        float* sG = reinterpret_cast<float*>(sAq + BT * SC);
        const int t0 = bos + c * BT, L = min(BT, eos - t0);
        const long long hv = (long long)Hv * D;
        load_rows128<T, NT>(sW, w + (long long)t0 * hv + h * D, hv, L, tid);
        load_rows128<T, NT>(sQ, q + (long long)t0 * sq + kh * D, sq, L, tid);
        load_rows128<T, NT>(sK, k + (long long)t0 * sk + kh * D, sk, L, tid);
        constexpr int UCH = BV / 8;
#pragma unroll
        for (int i = tid; i < BT * UCH; i += NT) {
            const int r = i / UCH, cc = (i % UCH) * 8;
            const bool ok = r < L;
            cp_async16(smem_u32(sU + r * SU + cc), u + ((long long)(t0 + (ok ? r : 0)) * Hv + h) * D + vb + cc, ok);
        }
#pragma unroll
        for (int i = tid; i < BT * 8; i += NT) {
            const int r = i >> 3, cc = (i & 7) * 8;
            const bool ok = r < L;
            cp_async16(smem_u32(sAq + r * SC + cc), aqk + ((long long)(t0 + (ok ? r : 0)) * Hv + h) * BT + cc, ok);
        }
#pragma unroll
        for (int i = tid; i < 3 * BT; i += NT) {
            const int arr = i / BT, r = i % BT;
            const float* src = (arr == 0 ? gc : arr == 1 ? rq : rk) + (long long)h * ntok + t0 + (r < L ? r : 0);
            cp_async4(smem_u32(sG + i), src, r < L);
        }
    };

    // S^T in the C layout of NJ m16n8 tiles: S[j][e] = S[dk = dk0 + 8 j + 2 t4 + (e & 1)][dv = vw + gq + 8 (e >> 1)]
    float S[NJ][4];
    const long long sbase = ((long long)s * Hv + h) * D * D + vw + gq;
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            S[j][e] = h0 ? h0[sbase + (long long)(dk0 + 8 * j + 2 * t4 + (e & 1)) * D + 8 * (e >> 1)] : 0.f;

#pragma unroll
    for (int c = 0; c < NS - 1; ++c) {
        if (c < nchunks) issue(c);
        cp_async_commit();
    }
    for (int c = 0; c < nchunks; ++c) {
        cp_async_wait<NS - 2>();
        __syncthreads();  // chunk c landed for every thread; every warp is done with chunk c - 1 (stage, partials)
        if (c + NS - 1 < nchunks) issue(c + NS - 1);
        cp_async_commit();
        const unsigned char* base = smem + (c % NS) * Lay::STAGE_BYTES;
        const T* sW = reinterpret_cast<const T*>(base);
        const T* sQ = sW + BT * SD;
        const T* sK = sQ + BT * SD;
        const T* sU = sK + BT * SD;
        const T* sAq = sU + BT * SU;
        const float* sG = reinterpret_cast<const float*>(sAq + BT * SC);
        const int t0 = bos + c * BT, L = min(BT, eos - t0);
        const float gl = sG[L - 1];

        // (W S)^T and (Q S)^T over this warp's dk: [16 dv x 64 tokens], 8 token tiles each
        float aw[8][4], aq[8][4];
#pragma unroll
        for (int nb = 0; nb < 8; ++nb)
#pragma unroll
            for (int e = 0; e < 4; ++e) aw[nb][e] = aq[nb][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KSL; ++ks) {
            const u32 a[4] = {pack2<T>(S[2 * ks][0], S[2 * ks][1]), pack2<T>(S[2 * ks][2], S[2 * ks][3]),
                              pack2<T>(S[2 * ks + 1][0], S[2 * ks + 1][1]), pack2<T>(S[2 * ks + 1][2], S[2 * ks + 1][3])};
#pragma unroll
            for (int nb = 0; nb < 8; nb += 2) {
                const int off = (nb * 8 + lrow) * SD + dk0 + ks * 16 + lcol;
                u32 bw[4], bq[4];
                ldsm_x4(bw, smem_u32(sW + off));
                ldsm_x4(bq, smem_u32(sQ + off));
                Mma<T>::k16(aw[nb], a, bw[0], bw[1]);
                Mma<T>::k16(aw[nb + 1], a, bw[2], bw[3]);
                Mma<T>::k16(aq[nb], a, bq[0], bq[1]);
                Mma<T>::k16(aq[nb + 1], a, bq[2], bq[3]);
            }
        }
        // this warp's output tiles of (Q S)^T (selected with compile-time indices: a register array indexed by the
        // warp would go to local memory); with KW > 1 the other warps' partials are added below
        float oq[OT][4];
#pragma unroll
        for (int x = 0; x < OT; ++x)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float val = aq[x][e];
#pragma unroll
                for (int r = 1; r < KW; ++r)
                    if (part == r) val = aq[r * OT + x][e];
                oq[x][e] = val;
            }
        if constexpr (KW > 1) {
            float4* mine = sP + warp * 2 * 8 * 32 + lane;
#pragma unroll
            for (int nb = 0; nb < 8; ++nb) {
                mine[nb * 32] = make_float4(aw[nb][0], aw[nb][1], aw[nb][2], aw[nb][3]);
                mine[(8 + nb) * 32] = make_float4(aq[nb][0], aq[nb][1], aq[nb][2], aq[nb][3]);
            }
            __syncthreads();  // every partial is visible
#pragma unroll
            for (int r = 1; r < KW; ++r) {
                const float4* other = sP + (grp * KW + (part + r) % KW) * 2 * 8 * 32 + lane;
#pragma unroll
                for (int nb = 0; nb < 8; ++nb) {
                    const float4 x = other[nb * 32];
                    aw[nb][0] += x.x; aw[nb][1] += x.y; aw[nb][2] += x.z; aw[nb][3] += x.w;
                }
#pragma unroll
                for (int x = 0; x < OT; ++x) {
                    const float4 y = other[(8 + ot0 + x) * 32];
                    oq[x][0] += y.x; oq[x][1] += y.y; oq[x][2] += y.z; oq[x][3] += y.w;
                }
            }
        }
        // Vn^T = U^T - (W S)^T (rounded), and the scaled copy for the state update; token column of entry e of
        // tile nb: 8 nb + 2 t4 + (e & 1)
        u32 vn[8][2], vs[8][2];
#pragma unroll
        for (int nb = 0; nb < 8; nb += 2) {
            u32 ut[4];
            ldsm_x4_t(ut, smem_u32(sU + (nb * 8 + lrow) * SU + 16 * grp + lcol));
#pragma unroll
            for (int x = 0; x < 2; ++x) {
                const int tok = (nb + x) * 8 + 2 * t4;
                const float f0 = __expf(gl - sG[tok]) * sG[2 * BT + tok];
                const float f1 = __expf(gl - sG[tok + 1]) * sG[2 * BT + tok + 1];
                const float2 u0 = unpack2<T>(ut[2 * x]), u1 = unpack2<T>(ut[2 * x + 1]);
                const float x0 = u0.x - aw[nb + x][0], x1 = u0.y - aw[nb + x][1];
                const float x2 = u1.x - aw[nb + x][2], x3 = u1.y - aw[nb + x][3];
                vn[nb + x][0] = pack2<T>(x0, x1);
                vn[nb + x][1] = pack2<T>(x2, x3);
                vs[nb + x][0] = pack2<T>(x0 * f0, x1 * f1);
                vs[nb + x][1] = pack2<T>(x2 * f0, x3 * f1);
            }
        }
#pragma unroll
        for (int x = 0; x < OT; ++x) {
            const int tok = (ot0 + x) * 8 + 2 * t4;
            const float q0 = __expf(sG[tok]) * sG[BT + tok], q1 = __expf(sG[tok + 1]) * sG[BT + tok + 1];
            oq[x][0] *= q0;
            oq[x][1] *= q1;
            oq[x][2] *= q0;
            oq[x][3] *= q1;
        }
        // S^T = exp(G_L) S^T + Vs^T K (the recurrence's chain) and O^T += Vn^T Aqk^T (k = tokens)
        const float dl = __expf(gl);
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) S[j][e] *= dl;
#pragma unroll
        for (int ks = 0; ks < 4; ++ks) {
            const u32 as[4] = {vs[2 * ks][0], vs[2 * ks][1], vs[2 * ks + 1][0], vs[2 * ks + 1][1]};
#pragma unroll
            for (int nb = 0; nb < NJ; nb += 2) {
                u32 bk[4];
                ldsm_x4_t(bk, smem_u32(sK + (ks * 16 + (lane & 7) + lcol) * SD + dk0 + nb * 8 + (lane >> 4) * 8));
                Mma<T>::k16(S[nb], as, bk[0], bk[1]);
                Mma<T>::k16(S[nb + 1], as, bk[2], bk[3]);
            }
            const u32 an[4] = {vn[2 * ks][0], vn[2 * ks][1], vn[2 * ks + 1][0], vn[2 * ks + 1][1]};
#pragma unroll
            for (int x = 0; x < OT; x += 2) {
                if (ot0 + x < 2 * ks) continue;  // Aqk is zero right of the diagonal: tokens j > i
                u32 ba[4];
                ldsm_x4(ba, smem_u32(sAq + ((ot0 + x) * 8 + lrow) * SC + ks * 16 + lcol));
                Mma<T>::k16(oq[x], an, ba[0], ba[1]);
                Mma<T>::k16(oq[x + 1], an, ba[2], ba[3]);
            }
        }
        // O^T tiles transposed into the group's [64 tokens][16 dv] tile (each warp its own rows), then 16-byte rows
        // to global memory
#pragma unroll
        for (int x = 0; x < OT; x += 2) {
#if __CUDA_ARCH__ >= 900
            stsm_x4_t(smem_u32(sO + ((ot0 + x) * 8 + lrow) * SO + lcol), pack2<T>(oq[x][0], oq[x][1]),
                      pack2<T>(oq[x][2], oq[x][3]), pack2<T>(oq[x + 1][0], oq[x + 1][1]),
                      pack2<T>(oq[x + 1][2], oq[x + 1][3]));
#else
#pragma unroll
            for (int y = 0; y < 2; ++y)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    sO[((ot0 + x + y) * 8 + 2 * t4 + (e & 1)) * SO + gq + 8 * (e >> 1)] = from_f<T>(oq[x + y][e]);
#endif
        }
        __syncwarp();
#pragma unroll
        for (int j = lane; j < OT * 16; j += 32) {  // OT * 8 rows of two 16-byte halves
            const int row = ot0 * 8 + (j >> 1), half = (j & 1) * 8;
            if (row < L)
                *reinterpret_cast<uint4*>(o + (long long)(t0 + row) * so + h * D + vw + half) =
                    *reinterpret_cast<const uint4*>(sO + row * SO + half);
        }
        __syncwarp();
    }
    cp_async_wait<0>();
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            hT[sbase + (long long)(dk0 + 8 * j + 2 * t4 + (e & 1)) * D + 8 * (e >> 1)] = S[j][e];
}

template <typename T, int BV, int NS>
__global__ void __launch_bounds__(256) gdn_chunk_state(
    const T* __restrict__ q, const T* __restrict__ k, long long sq, long long sk, int Hk, int Hv,
    const T* __restrict__ w, const T* __restrict__ u, const T* __restrict__ aqk, const float* __restrict__ gc,
    const float* __restrict__ rq, const float* __restrict__ rk, const int* __restrict__ cu,
    const float* h0, float* hT, T* __restrict__ o, long long so, int ntok) {
    chunk_state_body<T, BV, NS, 1>(q, k, sq, sk, Hk, Hv, w, u, aqk, gc, rq, rk, cu, h0, hT, o, so, ntok);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || !defined(__CUDA_ARCH__)
template <typename T, int BV, int NS, int CL>
__global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(256) gdn_chunk_state_mc(
    const T* __restrict__ q, const T* __restrict__ k, long long sq, long long sk, int Hk, int Hv,
    const T* __restrict__ w, const T* __restrict__ u, const T* __restrict__ aqk, const float* __restrict__ gc,
    const float* __restrict__ rq, const float* __restrict__ rk, const int* __restrict__ cu,
    const float* h0, float* hT, T* __restrict__ o, long long so, int ntok) {
    chunk_state_body<T, BV, NS, CL>(q, k, sq, sk, Hk, Hv, w, u, aqk, gc, rq, rk, cu, h0, hT, o, so, ntok);
}
#endif

// ---------------------------------------------------------------------------------------------------------------
// gdn_recurrent: token by token (decode, and the fp32 path)
// ---------------------------------------------------------------------------------------------------------------
// CTA = (BV columns of dv, value head, sequence), 128 threads: CG = BV/4 column groups of 4 columns (float4),
// RG = 128/CG row groups; thread (rg, cg) holds rows rg + RG*i (i < RPT) of its 4 columns.
template <typename T, int BV, bool GATE>
__global__ void __launch_bounds__(128) gdn_recurrent(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, long long sq, long long sk,
    long long sv, const float* g, const float* beta, const T* ga, const T* gb, const float* A_log,
    const float* dt_bias, const int* __restrict__ cu,
    int Hk, int Hv, float scale, int l2norm, const float* h0, float* hT, T* __restrict__ o, long long so,
    int direct) {
    constexpr int CG = BV / 4, RG = 128 / CG, RPT = D / RG;
    // a programmatic launch (ptx.cuh): the previous kernel's results (q, k, v, the state) first, then the next
    // kernel may be scheduled
    wait_for_primary_grid(q, k, v, cu);
    allow_dependent_launch();
    __shared__ float s_qk[2][2][D];    // raw q, k of the token (double-buffered by token parity)
    __shared__ float s_red[2][4][3];   // per-warp sums of q.q, k.k, q.k
    __shared__ float s_dot[2][4][2][BV];  // per-warp partial S^T k, S^T q
    __shared__ float s_delta[2][BV];
    const Gates<T, GATE> gates{g, beta, ga, gb, A_log, dt_bias};

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int cg = tid % CG, rg = tid / CG;
    const int vb = blockIdx.x * BV, h = blockIdx.y, s = blockIdx.z, kh = h / (Hv / Hk);
    const int bos = direct ? s : cu[s], eos = direct ? s + 1 : cu[s + 1];  // direct: see gdn_recurrent_warp
    const long long sbase = ((long long)s * Hv + h) * D * D + vb + cg * 4;

    float S[RPT][4];
#pragma unroll
    for (int i = 0; i < RPT; ++i) {
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (h0) x = *reinterpret_cast<const float4*>(h0 + sbase + (long long)(rg + RG * i) * D);
        S[i][0] = x.x; S[i][1] = x.y; S[i][2] = x.z; S[i][3] = x.w;
    }
    // the next token's inputs, loaded one token ahead
    float nq = 0.f, nk = 0.f, nv = 0.f, ng = 0.f, nb = 0.f;
    auto fetch = [&](int t) {
        nq = to_f(q[(long long)t * sq + kh * D + tid]);
        nk = to_f(k[(long long)t * sk + kh * D + tid]);
        if (tid < BV) nv = to_f(v[(long long)t * sv + h * D + vb + tid]);
        ng = gates.gate((long long)t * Hv + h, h);  // every thread decays its rows of S
        nb = gates.strength((long long)t * Hv + h);
    };
    if (bos < eos) fetch(bos);
    for (int t = bos; t < eos; ++t) {
        const int p = (t - bos) & 1;
        const float cq = nq, ck = nk, cv = nv, cgate = ng, cbeta = nb;
        if (t + 1 < eos) fetch(t + 1);
        s_qk[p][0][tid] = cq;
        s_qk[p][1][tid] = ck;
        const float r0 = warp_sum(cq * cq), r1 = warp_sum(ck * ck), r2 = warp_sum(cq * ck);
        if (lane == 0) { s_red[p][warp][0] = r0; s_red[p][warp][1] = r1; s_red[p][warp][2] = r2; }
        __syncthreads();
        float pk[4] = {0.f, 0.f, 0.f, 0.f}, pq[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int i = 0; i < RPT; ++i) {
            const float kr = s_qk[p][1][rg + RG * i], qr = s_qk[p][0][rg + RG * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) { pk[j] += S[i][j] * kr; pq[j] += S[i][j] * qr; }
        }
        // reduce over the row groups of this warp (lanes with the same cg), then across warps
#pragma unroll
        for (int off = CG; off < 32; off <<= 1)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                pk[j] += __shfl_xor_sync(0xffffffffu, pk[j], off);
                pq[j] += __shfl_xor_sync(0xffffffffu, pq[j], off);
            }
        if (lane < CG) {
#pragma unroll
            for (int j = 0; j < 4; ++j) { s_dot[p][warp][0][cg * 4 + j] = pk[j]; s_dot[p][warp][1][cg * 4 + j] = pq[j]; }
        }
        const float qq = s_red[p][0][0] + s_red[p][1][0] + s_red[p][2][0] + s_red[p][3][0];
        const float kk = s_red[p][0][1] + s_red[p][1][1] + s_red[p][2][1] + s_red[p][3][1];
        const float qk = s_red[p][0][2] + s_red[p][1][2] + s_red[p][2][2] + s_red[p][3][2];
        const float rqs = (l2norm ? rsqrtf(qq + L2_EPS) : 1.f) * scale, rks = l2norm ? rsqrtf(kk + L2_EPS) : 1.f;
        const float a = expf(cgate);
        __syncthreads();
        if (tid < BV) {
            const float dk_ = s_dot[p][0][0][tid] + s_dot[p][1][0][tid] + s_dot[p][2][0][tid] + s_dot[p][3][0][tid];
            const float dq_ = s_dot[p][0][1][tid] + s_dot[p][1][1][tid] + s_dot[p][2][1][tid] + s_dot[p][3][1][tid];
            const float delta = cbeta * (cv - a * rks * dk_);
            s_delta[p][tid] = delta;
            o[(long long)t * so + h * D + vb + tid] = from_f<T>(a * rqs * dq_ + (qk * rqs * rks) * delta);
        }
        __syncthreads();
        float dl[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) dl[j] = s_delta[p][cg * 4 + j];
#pragma unroll
        for (int i = 0; i < RPT; ++i) {
            const float kr = s_qk[p][1][rg + RG * i] * rks;
#pragma unroll
            for (int j = 0; j < 4; ++j) S[i][j] = a * S[i][j] + kr * dl[j];
        }
    }
#pragma unroll
    for (int i = 0; i < RPT; ++i)
        *reinterpret_cast<float4*>(hT + sbase + (long long)(rg + RG * i) * D) = make_float4(S[i][0], S[i][1], S[i][2], S[i][3]);
}

// gdn_recurrent_warp: the same recurrence with one warp per CTA and BV dv columns (the small-batch decode: many
// CTAs, no barriers, every reduction a butterfly of shuffles). Lane = rl * NCL + cl: NCL = BV / CPL column lanes
// of CPL columns each, RL = 32 / NCL row lanes of RPL = 128 / RL consecutive rows (CPL / 4 float4 a row), and
// the lane's own RPL entries of q and k, so the norms and S^T k / S^T q need no shared memory (the sums run over
// the row lanes only). direct: token t of sequence s is row s (every sequence one token long: T == n with a
// max_seqlen of 1), so cu_seqlens is not read and the input loads leave with the state loads in one round trip.
template <typename T, bool GATE, int BV, int CPL>
__global__ void __launch_bounds__(32) gdn_recurrent_warp(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, long long sq, long long sk,
    long long sv, const float* g, const float* beta, const T* ga, const T* gb, const float* A_log,
    const float* dt_bias, const int* __restrict__ cu, int Hk, int Hv, float scale, int l2norm, const float* h0,
    float* hT, T* __restrict__ o, long long so, int direct) {
    constexpr int NCL = BV / CPL, RL = 32 / NCL, RPL = D / RL;
    static_assert(CPL % 4 == 0 && BV % CPL == 0 && 32 % NCL == 0, "lane mapping");
    // a programmatic launch (ptx.cuh): the previous kernel's results (q, k, v, the state) first, then the next
    // kernel may be scheduled
    wait_for_primary_grid(q, k, v, cu);
    allow_dependent_launch();
    const Gates<T, GATE> gates{g, beta, ga, gb, A_log, dt_bias};
    const int lane = threadIdx.x, rl = lane / NCL, cl = lane % NCL;
    const int vb = blockIdx.x * BV, h = blockIdx.y, s = blockIdx.z, kh = h / (Hv / Hk);
    const int col = vb + cl * CPL;
    const long long sbase = ((long long)s * Hv + h) * D * D + (long long)(rl * RPL) * D + col;
    float S[RPL][CPL];
#pragma unroll
    for (int i = 0; i < RPL; ++i)
#pragma unroll
        for (int j = 0; j < CPL; j += 4) {
            float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
            if (h0) x = *reinterpret_cast<const float4*>(h0 + sbase + i * D + j);
            S[i][j] = x.x; S[i][j + 1] = x.y; S[i][j + 2] = x.z; S[i][j + 3] = x.w;
        }
    int bos = s, eos = s + 1;
    if (!direct) { bos = cu[s]; eos = cu[s + 1]; }
    float nq[RPL], nk[RPL], nv[CPL], ng = 0.f, nb = 0.f;
    auto fetch = [&](int t) {  // this lane's RPL entries of q and k, its CPL columns of v, the gates
#pragma unroll
        for (int i = 0; i < RPL; i += 4) {
            float a4[4], b4[4];
            load_f<T, 4>(q + (long long)t * sq + kh * D + rl * RPL + i, a4);
            load_f<T, 4>(k + (long long)t * sk + kh * D + rl * RPL + i, b4);
#pragma unroll
            for (int x = 0; x < 4; ++x) { nq[i + x] = a4[x]; nk[i + x] = b4[x]; }
        }
#pragma unroll
        for (int j = 0; j < CPL; j += 4) {
            float c4[4];
            load_f<T, 4>(v + (long long)t * sv + h * D + col + j, c4);
#pragma unroll
            for (int x = 0; x < 4; ++x) nv[j + x] = c4[x];
        }
        ng = gates.gate((long long)t * Hv + h, h);
        nb = gates.strength((long long)t * Hv + h);
    };
    if (bos < eos) fetch(bos);
    for (int t = bos; t < eos; ++t) {
        float cq[RPL], ck[RPL], cv[CPL];
#pragma unroll
        for (int i = 0; i < RPL; ++i) { cq[i] = nq[i]; ck[i] = nk[i]; }
#pragma unroll
        for (int j = 0; j < CPL; ++j) cv[j] = nv[j];
        const float cgate = ng, cbeta = nb;
        if (t + 1 < eos) fetch(t + 1);
        float qq = 0.f, kk = 0.f, qk = 0.f;
#pragma unroll
        for (int i = 0; i < RPL; ++i) { qq += cq[i] * cq[i]; kk += ck[i] * ck[i]; qk += cq[i] * ck[i]; }
        float pk[CPL], pq[CPL];
#pragma unroll
        for (int j = 0; j < CPL; ++j) {
            pk[j] = 0.f;
            pq[j] = 0.f;
#pragma unroll
            for (int i = 0; i < RPL; ++i) { pk[j] += S[i][j] * ck[i]; pq[j] += S[i][j] * cq[i]; }
        }
#pragma unroll
        for (int off = 16; off >= NCL; off >>= 1) {  // over the row lanes (lane bits above the column lanes')
            qq += __shfl_xor_sync(0xffffffffu, qq, off);
            kk += __shfl_xor_sync(0xffffffffu, kk, off);
            qk += __shfl_xor_sync(0xffffffffu, qk, off);
#pragma unroll
            for (int j = 0; j < CPL; ++j) {
                pk[j] += __shfl_xor_sync(0xffffffffu, pk[j], off);
                pq[j] += __shfl_xor_sync(0xffffffffu, pq[j], off);
            }
        }
        const float rqs = (l2norm ? rsqrtf(qq + L2_EPS) : 1.f) * scale, rks = l2norm ? rsqrtf(kk + L2_EPS) : 1.f;
        const float a = expf(cgate), kq = qk * rqs * rks;
        float dl[CPL], ov[CPL];
#pragma unroll
        for (int j = 0; j < CPL; ++j) {
            dl[j] = cbeta * (cv[j] - a * rks * pk[j]);
            ov[j] = a * rqs * pq[j] + kq * dl[j];
        }
        if (rl == 0) {
#pragma unroll
            for (int j = 0; j < CPL; j += 4) {
                const float o4[4] = {ov[j], ov[j + 1], ov[j + 2], ov[j + 3]};
                store_f<T, 4>(o + (long long)t * so + h * D + col + j, o4);
            }
        }
#pragma unroll
        for (int i = 0; i < RPL; ++i) {
            const float kr = ck[i] * rks;
#pragma unroll
            for (int j = 0; j < CPL; ++j) S[i][j] = a * S[i][j] + kr * dl[j];
        }
    }
#pragma unroll
    for (int i = 0; i < RPL; ++i)
#pragma unroll
        for (int j = 0; j < CPL; j += 4)
            *reinterpret_cast<float4*>(hT + sbase + i * D + j) = make_float4(S[i][j], S[i][j + 1], S[i][j + 2], S[i][j + 3]);
}

}  // namespace deltanet
