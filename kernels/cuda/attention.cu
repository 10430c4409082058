// Packed varlen flash attention (forward), mma.sync m16n8k16 tensor cores, sm_80+.
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
// all heads of the heaviest tile start first). The host gives an upper bound on the number of q-tiles,
// floor((T + nseg * (BM - 1)) / BM), which needs no read of cu_seqlens; warp 0 of each CTA finds its
// (segment, tile) by a warp-wide prefix sum of ceil(len / BM) over the segments. CTAs past the last tile exit.
//
// attn_fwd_ws (end of file, sm_90a only) is the Hopper kernel: warp-specialised, TMA loads, wgmma products; it
// shares the tile map, mask, softmax and epilogue code with attn_fwd.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace attn {

typedef unsigned int u32;

template <typename T> struct Mma;

template <> struct Mma<__nv_bfloat16> {
    static __device__ __forceinline__ void k16(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ void k8(float (&c)[4], u32 a0, u32 a1, u32 b0) {
        asm volatile(
            "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(b0));
    }
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<u32*>(&h);
    }
};

template <> struct Mma<__half> {
    static __device__ __forceinline__ void k16(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ void k8(float (&c)[4], u32 a0, u32 a1, u32 b0) {
        asm volatile(
            "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(b0));
    }
    static __device__ __forceinline__ u32 pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<u32*>(&h);
    }
};

__device__ __forceinline__ u32 smem_u32(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}

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

// 16-byte global -> shared copy; when !valid nothing is read and the 16 bytes are zero-filled.
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Barrier `id` over n threads of the CTA, callable from different places in the code by whole warps.
__device__ __forceinline__ void bar_sync(int id, int n) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }


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


// Which (segment, q-tile) is CTA tile number `tile`: a warp-wide prefix sum of ceil(len / BM) over the
// segments, 32 at a time. Writes {segment or -1 past the last tile, tile index inside the segment}.
__device__ __forceinline__ void find_tile(const int* __restrict__ cu, int nseg, int tile, int lane, int* s_map,
                                          int BM) {
    int base = 0, seg = -1, tl = 0;
    for (int c0 = 0; c0 < nseg; c0 += 32) {
        const int s = c0 + lane;
        const int cnt = s < nseg ? (cu[s + 1] - cu[s] + BM - 1) / BM : 0;
        int inc = cnt;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            const int y = __shfl_up_sync(0xffffffffu, inc, off);
            if (lane >= off) inc += y;
        }
        const int exc = inc - cnt;
        const unsigned hit = __ballot_sync(0xffffffffu, cnt > 0 && tile >= base + exc && tile < base + inc);
        if (hit) {
            const int src = __ffs(hit) - 1;
            seg = c0 + src;
            tl = tile - base - __shfl_sync(0xffffffffu, exc, src);
            break;
        }
        base += __shfl_sync(0xffffffffu, inc, 31);
    }
    if (lane == 0) { s_map[0] = seg; s_map[1] = tl; }
}


// Set S to -inf where the key lies past the segment end or (causal) after the query row. Rows of this warp:
// wrow0 + mt*16 + g (+8); columns kv0 + nb*8 + 2*t4 (+1): the m16n8 accumulator layout.
template <int MT, int NB, bool CAUSAL>
__device__ __forceinline__ void mask_tile(float (&s)[MT][NB][4], int wrow0, int kv0, int L, int g, int t4) {
    const float NEG_INF = __int_as_float(0xff800000);
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
    const float NEG_INF = __int_as_float(0xff800000);
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
            float l = l_i[mt][h];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const int row = wrow0 + mt * 16 + g + h * 8;
            if (row < L) {
                const float inv = 1.f / l;
                T* orow = o + ((size_t)(seg_start + row) * Hq + head) * D + 2 * t4;
#pragma unroll
                for (int db = 0; db < DB; ++db)
                    *reinterpret_cast<u32*>(orow + db * 8) =
                        Mma<T>::pack(acc[mt][db][2 * h] * inv, acc[mt][db][2 * h + 1] * inv);
                if (lse != nullptr && t4 == 0)
                    lse[(size_t)(seg_start + row) * Hq + head] = (m_i[mt][h] + log2f(l)) * 0.69314718055994531f;
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

// P (n-blocks 2*kb2, 2*kb2+1 of S, 16 keys) rounded to T and packed as the A operand of PV: S's accumulator
// layout is the A-operand layout of the next mma.
template <typename T, int MT, int NB>
__device__ __forceinline__ void pack_p(u32 (&pa)[MT][4], const float (&s)[MT][NB][4], int kb2) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = Mma<T>::pack(s[mt][2 * kb2][0], s[mt][2 * kb2][1]);
        pa[mt][1] = Mma<T>::pack(s[mt][2 * kb2][2], s[mt][2 * kb2][3]);
        pa[mt][2] = Mma<T>::pack(s[mt][2 * kb2 + 1][0], s[mt][2 * kb2 + 1][1]);
        pa[mt][3] = Mma<T>::pack(s[mt][2 * kb2 + 1][2], s[mt][2 * kb2 + 1][3]);
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
    const float NEG_INF = __int_as_float(0xff800000);

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

// =====================================================================================================
// Hopper (sm_90a) building blocks: warpgroup MMA (wgmma.mma_async). S = Q K^T is m64nBNk16 with Q and K read
// by the tensor cores from shared memory; O += P V is m64nDk16 with P from registers (the S accumulator
// layout per warp is the mma.sync one, so the mask/softmax/epilogue code above serves both) and V read from
// shared memory N-major (trans-b). PV's n-dim is D itself (n72 is a legal wgmma shape).
// =====================================================================================================
__device__ __forceinline__ void reg_fence(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// ---- m64nNk16 f32 += bf16/f16 wrappers: ss = A and B in shared memory, K-major; rs = A in registers, B in shared
//      memory N-major (trans-b = 1), always accumulating. Each asm statement is written once, as a macro of the
//      element type TY ("bf16" or "f16"). ----
#define ATTN_WGMMA_SS_N64(TY) asm volatile( \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n" \
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n" \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
        : "l"(da), "l"(db), "r"(acc))
template <bool BF16> __device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], unsigned long long da, unsigned long long db, int acc) {
    if constexpr (BF16) ATTN_WGMMA_SS_N64("bf16");
    else ATTN_WGMMA_SS_N64("f16");
}
#undef ATTN_WGMMA_SS_N64
#define ATTN_WGMMA_SS_N128(TY) asm volatile( \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n" \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n" \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
        : "l"(da), "l"(db), "r"(acc))
template <bool BF16> __device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], unsigned long long da, unsigned long long db, int acc) {
    if constexpr (BF16) ATTN_WGMMA_SS_N128("bf16");
    else ATTN_WGMMA_SS_N128("f16");
}
#undef ATTN_WGMMA_SS_N128
#define ATTN_WGMMA_RS_N64(TY) asm volatile( \
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n" \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db))
template <bool BF16> __device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const unsigned (&a)[4], unsigned long long db) {
    if constexpr (BF16) ATTN_WGMMA_RS_N64("bf16");
    else ATTN_WGMMA_RS_N64("f16");
}
#undef ATTN_WGMMA_RS_N64
#define ATTN_WGMMA_RS_N72(TY) asm volatile( \
        "wgmma.mma_async.sync.aligned.m64n72k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35}, {%36, %37, %38, %39}, %40, 1, 1, 1, 1;\n" \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]) \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db))
template <bool BF16> __device__ __forceinline__ void wgmma_rs_n72(float (&d)[36], const unsigned (&a)[4], unsigned long long db) {
    if constexpr (BF16) ATTN_WGMMA_RS_N72("bf16");
    else ATTN_WGMMA_RS_N72("f16");
}
#undef ATTN_WGMMA_RS_N72
#define ATTN_WGMMA_RS_N80(TY) asm volatile( \
        "wgmma.mma_async.sync.aligned.m64n80k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39}, {%40, %41, %42, %43}, %44, 1, 1, 1, 1;\n" \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]) \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db))
template <bool BF16> __device__ __forceinline__ void wgmma_rs_n80(float (&d)[40], const unsigned (&a)[4], unsigned long long db) {
    if constexpr (BF16) ATTN_WGMMA_RS_N80("bf16");
    else ATTN_WGMMA_RS_N80("f16");
}
#undef ATTN_WGMMA_RS_N80
#define ATTN_WGMMA_RS_N128(TY) asm volatile( \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n" \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db))
template <bool BF16> __device__ __forceinline__ void wgmma_rs_n128(float (&d)[64], const unsigned (&a)[4], unsigned long long db) {
    if constexpr (BF16) ATTN_WGMMA_RS_N128("bf16");
    else ATTN_WGMMA_RS_N128("f16");
}
#undef ATTN_WGMMA_RS_N128

template <typename T> struct IsBf16 { static constexpr bool value = false; };
template <> struct IsBf16<__nv_bfloat16> { static constexpr bool value = true; };

// S (+)= Q K^T for one k16 step, N = BN keys (Q and K both read from shared memory).
template <bool BF16, int N>
__device__ __forceinline__ void wgmma_qk(float (&d)[N / 2], unsigned long long da, unsigned long long db, int acc) {
    if constexpr (N == 64) wgmma_ss_n64<BF16>(d, da, db, acc);
    else wgmma_ss_n128<BF16>(d, da, db, acc);
}
// O += P V for one k16 step, N = D head-dim columns (256 as two n128 halves, 16 chunks = 2048 B apart).
template <bool BF16, int D>
__device__ __forceinline__ void wgmma_pv(float (&d)[D / 2], const u32 (&a)[4], unsigned long long db) {
    if constexpr (D == 64) wgmma_rs_n64<BF16>(d, a, db);
    else if constexpr (D == 72) wgmma_rs_n72<BF16>(d, a, db);
    else if constexpr (D == 80) wgmma_rs_n80<BF16>(d, a, db);
    else if constexpr (D == 128) wgmma_rs_n128<BF16>(d, a, db);
    else {
        static_assert(D == 256, "head dim");
        wgmma_rs_n128<BF16>(reinterpret_cast<float (&)[64]>(d[0]), a, db);
        wgmma_rs_n128<BF16>(reinterpret_cast<float (&)[64]>(d[64]), a, db + (2048 >> 4));
    }
}

// =====================================================================================================
// Warp-specialised Hopper kernel (sm_90a): attn_fwd_ws, FA3's structure.
//
// One CTA = NCWG consumer warpgroups of 64 query rows each (BM = 64 * NCWG) plus one producer warpgroup.
// Producer: one thread issues the tensor-memory-accelerator copies (cp.async.bulk.tensor) of Q once, then of
//   K_j and V_j into a STAGES-deep ring of shared-memory stages. Each copy completes a stage's "full" mbarrier
//   by its byte count; before overwriting a stage the thread waits on its "empty" mbarrier. The other producer
//   warps only give their registers away (setmaxnreg) and exit.
// Consumers (FA3's intra-warpgroup pipelining): per key tile j, issue S_j = Q K_j^T and O += P_{j-1} V_{j-1}
//   as two asynchronous wgmma groups; wait for the first; release K_j; mask and exponentiate S_j while the
//   tensor cores still run PV; wait for PV; release V_{j-1}; rescale O (only if a row max grew). O_{j-1} holds
//   P_{j-1} V_{j-1} relative to the max m_{j-1} when it is rescaled by exp2(m_{j-1} - m_j), as it should.
// Shared memory: every tile (Q, each K and V stage) is stored as NREG = ceil(D / 64) regions of [rows][64]
//   elements in the 128-byte swizzle layout that both the copy engine (CU_TENSOR_MAP_SWIZZLE_128B) and wgmma
//   (layout type 1) use: 8-row atoms of 1024 bytes, the 16-byte chunks of row r XOR-ed with r % 8. Region g
//   holds columns 64 g .. 64 g + 63; columns past D are out of the tensor's bounds, so the copy engine writes
//   zeros there. That is the only padding of D = 72 (to 80 for QK^T's k-steps of 16; PV's n is 72 exactly),
//   and it exists only in shared memory. Rows past the end of the packed tensor are zero-filled the same way.
//   Q and K are read K-major (k-step ks at region ks / 4, byte 32 (ks % 4) of each row), V N-major (trans-b;
//   the 64-column regions are the n-direction repeats, LBO apart; 8-row groups 1024 bytes apart).
// Epilogue: a warpgroup whose 64 rows all lie in the segment writes O / l into its own rows of the Q tile (free
//   after its last QK), in the same swizzled layout, and stores them with one TMA copy per region (coalesced, and
//   1.8 -> 1.3 us per CTA at 784 keys); a partial last tile stores per thread, as a whole box would overwrite
//   rows of the next segment.
// Rounds (non-causal, where two Q buffers fit): a CTA runs up to max_rounds consecutive tiles of one segment and
//   head. The K/V ring runs on across tiles, the producer loads tile r + 1's Q into the other buffer while tile r
//   computes, and a buffer is refilled once every consumer warp has finished the epilogue that stages O in it
//   (q_empty). This saves the fixed cost of a CTA per extra tile (8 images of 784 tokens: 263 -> 294 TFLOP/s).
// No CTA-wide barrier after the prologue: stages are handed over by the mbarriers alone.
// =====================================================================================================
// Diagnostic build (-DATTN_TIMING, scripts/attention_timing.py): %globaltimer stamps per CTA into the lse
// argument, reused as a [grid][8] u64 buffer (lse itself is then not written).
#ifdef ATTN_TIMING
__device__ __forceinline__ unsigned long long gtime() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}
#define TSTAMP(i) (tbuf[blockIdx.x * 8 + (i)] = gtime())
#else
#define TSTAMP(i)
#endif
__device__ __forceinline__ void wgmma_wait1() { asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); }

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
// Arrive on `bar` and add `bytes` to the transaction count its current phase waits for.
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}
// Wait until the phase of `bar` with this parity has completed (a fresh barrier counts parity 1 as complete).
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    asm volatile(
        "{\n.reg .pred done;\nWAIT_LOOP:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT_LOOP;\n}\n" ::"r"(bar), "r"(parity) : "memory");
}
template <int N> __device__ __forceinline__ void regs_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N> __device__ __forceinline__ void regs_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }

// A CUtensorMap (the copy engine's 128-byte tensor descriptor), passed by value as a __grid_constant__ parameter.
struct __align__(64) TmaDesc { unsigned long long w[16]; };

// Copy the box at coordinates (c0 = column, c1 = head, c2 = row) of a [T, H, D] tensor into shared memory,
// completing `bar`'s transaction count by the box's bytes.
__device__ __forceinline__ void tma_load_3d(u32 dst, const TmaDesc& tm, int c0, int c1, int c2, u32 bar) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n"
        ::"r"(dst), "l"(reinterpret_cast<unsigned long long>(&tm)), "r"(c0), "r"(c1), "r"(c2), "r"(bar) : "memory");
}
// Copy a box from shared memory to global memory at (c0, c1, c2) (the reverse of tma_load_3d; elements out of the
// tensor's bounds are not written), then wait until the copy engine has read the shared memory.
__device__ __forceinline__ void tma_store_3d(const TmaDesc& tm, int c0, int c1, int c2, u32 src) {
    asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%1, %2, %3}], [%4];\n"
                 ::"l"(reinterpret_cast<unsigned long long>(&tm)), "r"(c0), "r"(c1), "r"(c2), "r"(src) : "memory");
}
__device__ __forceinline__ void tma_store_commit_and_wait_read() {
    asm volatile("cp.async.bulk.commit_group;\ncp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
__device__ __forceinline__ void tma_prefetch_desc(const TmaDesc& tm) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<unsigned long long>(&tm)) : "memory");
}

// wgmma shared-memory descriptor for the 128-byte swizzle layout (8-row atoms of 1024 bytes).
__device__ __forceinline__ unsigned long long make_desc_sw128(u32 saddr, u32 lbo) {
    return (unsigned long long)((saddr & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

// O += P V for one k16 step, N = D head-dim columns; 256 as two n128 halves, the second `half` descriptor units on.
template <bool BF16, int D>
__device__ __forceinline__ void wgmma_pv_ws(float (&d)[D / 2], const u32 (&a)[4], unsigned long long db, u32 half) {
    if constexpr (D == 256) {
        wgmma_rs_n128<BF16>(reinterpret_cast<float (&)[64]>(d[0]), a, db);
        wgmma_rs_n128<BF16>(reinterpret_cast<float (&)[64]>(d[64]), a, db + half);
    } else {
        wgmma_pv<BF16, D>(d, a, db);
    }
}

template <typename T, int D, int NCWG, int BN, int STAGES, bool CAUSAL>
__global__ void __launch_bounds__((NCWG + 1) * 128, 1)
attn_fwd_ws(T* __restrict__ o, float* __restrict__ lse, const int* __restrict__ cu, int nseg, int Hq, int Hkv,
            float scale_log2, int max_rounds, const __grid_constant__ TmaDesc tm_q,
            const __grid_constant__ TmaDesc tm_k, const __grid_constant__ TmaDesc tm_v,
            const __grid_constant__ TmaDesc tm_o) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr bool BF16 = IsBf16<T>::value;
    constexpr int BM = 64 * NCWG;
    constexpr int DK = (D + 15) / 16 * 16;   // k-extent of QK^T (80 for D = 72)
    constexpr int NREG = (D + 63) / 64;      // 64-column regions per row
    constexpr int NB = BN / 8, KB = BN / 16, DB = D / 8;
    constexpr u32 Q_BYTES = NREG * BM * 128, KV_BYTES = NREG * BN * 128;  // one tile, all regions
    // registers per thread after setmaxnreg (FA3's split): the producer's release must cover the consumers'
    // raise, or setmaxnreg.inc would wait forever. NCWG = 2: 384 threads start at 168 (the launch bound),
    // 128 * (168 - 24) = 256 * (240 - 168). NCWG = 3: 512 threads start at 128, 128 * (128 - 32) = 384 * (160 - 128).
    // NCWG = 4: 640 threads start at 96, 128 * (96 - 24) >= 512 * (112 - 96).
    constexpr int PRODUCER_REGS = NCWG == 3 ? 32 : 24;
    constexpr int CONSUMER_REGS = NCWG == 2 ? 240 : NCWG == 3 ? 160 : 112;
    static_assert(NCWG >= 2 && NCWG <= 4, "2 to 4 consumer warpgroups");
    static_assert(D % 8 == 0 && (BN == 64 || BN == 128) && STAGES >= 2, "tile shape");
    // Two Q buffers where they fit in shared memory (227 KB): a CTA then runs up to max_rounds consecutive tiles of
    // one segment and head, the next tile's Q loading while the current one computes (kernels/attention.py mirrors
    // this rule in WsVariant.qbufs).
    constexpr int QBUF = 2 * Q_BYTES + 2 * STAGES * KV_BYTES + 1024 <= 227 * 1024 ? 2 : 1;
    const float NEG_INF = __int_as_float(0xff800000);

    extern __shared__ unsigned char smem_raw[];
    // the swizzle atoms need 1024-byte alignment (the host asks for 1024 bytes more than the tiles take)
    const u32 sbase = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const u32 sQ = sbase, sK = sQ + QBUF * Q_BYTES, sV = sK + STAGES * KV_BYTES;
    // mbarriers: per Q buffer full (one producer arrival plus the copies' bytes) and empty (4 * NCWG arrivals, one
    // per consumer warp, after its epilogue); per stage K full, V full, K empty, V empty (the same counts)
    __shared__ __align__(8) unsigned long long bars[2 * QBUF + 4 * STAGES];
    __shared__ int s_map[2];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
#ifdef ATTN_TIMING
    unsigned long long* tbuf = reinterpret_cast<unsigned long long*>(lse);
    lse = nullptr;
#endif
    if (tid == 0) TSTAMP(0);
    const int head = blockIdx.x % Hq;
    int tile = blockIdx.x / Hq;
    if (CAUSAL) tile = gridDim.x / Hq - 1 - tile;
    const int R = QBUF == 2 && !CAUSAL ? max_rounds : 1;  // tiles per CTA at most
    if (warp == 0) find_tile(cu, nseg, tile, lane, s_map, BM * R);
    const u32 bar0 = smem_u32(bars);
    auto q_full = [&](int b) { return bar0 + 8u * b; };
    auto q_empty = [&](int b) { return bar0 + 8u * (QBUF + b); };
    auto k_full = [&](int s) { return bar0 + 8u * (2 * QBUF + s); };
    auto v_full = [&](int s) { return bar0 + 8u * (2 * QBUF + STAGES + s); };
    auto k_empty = [&](int s) { return bar0 + 8u * (2 * QBUF + 2 * STAGES + s); };
    auto v_empty = [&](int s) { return bar0 + 8u * (2 * QBUF + 3 * STAGES + s); };
    if (tid == 32) {
        for (int b = 0; b < QBUF; ++b) {
            mbar_init(q_full(b), 1);
            mbar_init(q_empty(b), 4 * NCWG);
        }
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(k_full(s), 1);
            mbar_init(v_full(s), 1);
            mbar_init(k_empty(s), 4 * NCWG);
            mbar_init(v_empty(s), 4 * NCWG);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");  // visible to the copy engine
    }
    __syncthreads();  // barriers initialised, tile map written
    if (tid == 0) TSTAMP(1);
    const int seg = s_map[0];
    if (seg < 0) return;  // uniform over the CTA
    const int seg_start = cu[seg];
    const int L = cu[seg + 1] - seg_start;
    const int first = s_map[1] * R;                           // the CTA's first tile in the segment
    const int rounds = min(R, (L + BM - 1) / BM - first);     // ... and how many it runs, one after another
    const int kvh = head / (Hq / Hkv);
    auto n_kv_of = [&](int q0) { return ((CAUSAL ? min(L, q0 + BM) : L) + BN - 1) / BN; };

    if (wg == NCWG) {  // ---- producer warpgroup: one thread issues every copy ----
        regs_dec<PRODUCER_REGS>();
        if (tid == NCWG * 128) {
            tma_prefetch_desc(tm_q);
            tma_prefetch_desc(tm_k);
            tma_prefetch_desc(tm_v);
            int t = 0;  // K/V tiles issued so far, over all rounds: the ring's position
            for (int r = 0; r < rounds; ++r) {
                const int qb = r % QBUF, q0 = (first + r) * BM;
                if (r >= QBUF) mbar_wait(q_empty(qb), ((r - QBUF) / QBUF) & 1);  // round r - QBUF's epilogue is done
                mbar_arrive_expect_tx(q_full(qb), Q_BYTES);
#pragma unroll
                for (int g = 0; g < NREG; ++g)
                    tma_load_3d(sQ + qb * Q_BYTES + g * BM * 128, tm_q, 64 * g, head, seg_start + q0, q_full(qb));
                if (r == 0) TSTAMP(2);
                const int n_kv = n_kv_of(q0);
                for (int j = 0; j < n_kv; ++j, ++t) {
                    const int st = t % STAGES;
                    const u32 ph = ((t / STAGES) & 1) ^ 1;  // the consumers' release of this stage's previous tile
                    const int row = seg_start + j * BN;
                    mbar_wait(k_empty(st), ph);
                    mbar_arrive_expect_tx(k_full(st), KV_BYTES);
#pragma unroll
                    for (int g = 0; g < NREG; ++g)
                        tma_load_3d(sK + st * KV_BYTES + g * BN * 128, tm_k, 64 * g, kvh, row, k_full(st));
                    mbar_wait(v_empty(st), ph);
                    mbar_arrive_expect_tx(v_full(st), KV_BYTES);
#pragma unroll
                    for (int g = 0; g < NREG; ++g)
                        tma_load_3d(sV + st * KV_BYTES + g * BN * 128, tm_v, 64 * g, kvh, row, v_full(st));
                }
            }
        }
        return;
    }

    // ---- consumer warpgroups ----
    regs_inc<CONSUMER_REGS>();
    const int g = lane >> 2, t4 = lane & 3;
    unsigned long long dq;  // this warpgroup's rows of the round's Q buffer
    auto dk_of = [&](int st) { return make_desc_sw128(sK + st * KV_BYTES, 16); };
    auto dv_of = [&](int st) { return make_desc_sw128(sV + st * KV_BYTES, BN * 128); };
    auto release = [&](u32 bar) {  // this warp is done reading a stage
        if (lane == 0) mbar_arrive(bar);
    };

    float m_i[1][2], l_i[1][2];
    float acc[1][DB][4];
    float (&of)[D / 2] = reinterpret_cast<float (&)[D / 2]>(acc);
    float s[1][NB][4];
    float (&sf)[BN / 2] = reinterpret_cast<float (&)[BN / 2]>(s);
    u32 pa[KB][1][4];  // P of the previous key tile, packed: the A operand of PV, from registers

    // S = Q K^T on stage st: k-step ks reads region ks / 4 of Q and K at 32 (ks % 4) bytes into each row
    // (descriptor addresses count 16-byte units)
    auto issue_qk = [&](int st) {
        const unsigned long long dk = dk_of(st);
#pragma unroll
        for (int ks = 0; ks < DK / 16; ++ks)
            wgmma_qk<BF16, BN>(sf, dq + (ks >> 2) * (BM * 128 >> 4) + (ks & 3) * 2,
                               dk + (ks >> 2) * (BN * 128 >> 4) + (ks & 3) * 2, ks > 0);
    };
    // O += P V on stage st: k-step kb2 is 16 key rows = two 1024-byte atoms further

    auto issue_pv = [&](int st) {
        const unsigned long long dv = dv_of(st);
#pragma unroll
        for (int kb2 = 0; kb2 < KB; ++kb2)
            wgmma_pv_ws<BF16, D>(of, pa[kb2][0], dv + kb2 * (2048 >> 4), 2 * BN * 128 >> 4);
    };

    int t0 = 0;  // the ring's position at the round's first key tile (as in the producer)
    for (int r = 0; r < rounds; ++r) {
        const int qb = r % QBUF, q0 = (first + r) * BM;
        const int n_kv = n_kv_of(q0);
        const int wgrow0 = q0 + wg * 64;             // first row of this warpgroup, local to the segment
        const int wrow0 = wgrow0 + (warp & 3) * 16;  // ... of this warp
        // key tiles this warpgroup multiplies: all of them, none if its rows lie past the segment, and (causal) only
        // those starting at or before its last row. It still takes part in the hand-over of the others (below).
        int n_my = wgrow0 < L ? n_kv : 0;
        if (CAUSAL && n_my > 0) n_my = min(n_kv, (wgrow0 + 63) / BN + 1);
        dq = make_desc_sw128(sQ + qb * Q_BYTES + wg * 64 * 128, 16);
        auto stage = [&](int j) { return (t0 + j) % STAGES; };
        auto phase = [&](int j) { return (u32)(((t0 + j) / STAGES) & 1); };
        m_i[0][0] = m_i[0][1] = NEG_INF;
        l_i[0][0] = l_i[0][1] = 0.f;
#pragma unroll
        for (int db = 0; db < DB; ++db) acc[0][db][0] = acc[0][db][1] = acc[0][db][2] = acc[0][db][3] = 0.f;

        if (n_my > 0) {
            // S_0 = Q K_0^T, softmax (O is still zero, so its rescale is skipped)
            mbar_wait(q_full(qb), (r / QBUF) & 1);
            mbar_wait(k_full(stage(0)), phase(0));
            if (tid == 0 && r == 0) TSTAMP(3);
#pragma unroll
            for (int i = 0; i < BN / 2; ++i) reg_fence(sf[i]);
            wgmma_fence();
            issue_qk(stage(0));
            wgmma_commit();
            wgmma_wait0();
#pragma unroll
            for (int i = 0; i < BN / 2; ++i) reg_fence(sf[i]);
            release(k_empty(stage(0)));
            mask_tile<1, NB, CAUSAL>(s, wrow0, 0, L, g, t4);
            {
                float alpha[1][2];
                softmax_p<1, NB>(s, m_i, l_i, alpha, scale_log2);
            }
            for (int j = 1; j < n_my; ++j) {
                const int sk = stage(j), sv = stage(j - 1);
#pragma unroll
                for (int kb2 = 0; kb2 < KB; ++kb2) pack_p<T, 1, NB>(pa[kb2], s, kb2);
                mbar_wait(k_full(sk), phase(j));
                mbar_wait(v_full(sv), phase(j - 1));
#pragma unroll
                for (int i = 0; i < BN / 2; ++i) reg_fence(sf[i]);
#pragma unroll
                for (int i = 0; i < D / 2; ++i) reg_fence(of[i]);
                    wgmma_fence();
                issue_qk(sk);
                wgmma_commit();
                issue_pv(sv);
                wgmma_commit();
                    wgmma_wait1();  // S_j is ready; PV_{j-1} may still run
#pragma unroll
                for (int i = 0; i < BN / 2; ++i) reg_fence(sf[i]);
                release(k_empty(sk));
                mask_tile<1, NB, CAUSAL>(s, wrow0, j * BN, L, g, t4);
                float alpha[1][2];
                const bool grew = softmax_p<1, NB>(s, m_i, l_i, alpha, scale_log2);
#pragma unroll
                for (int i = 0; i < BN / 2; ++i) reg_fence(sf[i]);
                // Wait for PV in both arms of a branch that depends on the softmax: ptxas hoists a wgmma wait to the
                // top of its basic block, which here would put it before the exponentials and serialise them with PV
                // (seen in the SASS: 0 MUFU.EX2 between the two waits with a single wait; 66 with this form).
                if (grew) {
                    wgmma_wait0();
#pragma unroll
                    for (int i = 0; i < D / 2; ++i) reg_fence(of[i]);
                    rescale_o<1, DB>(acc, alpha);
                } else {
                    wgmma_wait0();
#pragma unroll
                    for (int i = 0; i < D / 2; ++i) reg_fence(of[i]);
                }
                release(v_empty(sv));
            }
            // O += P_{n-1} V_{n-1}
            const int sv = stage(n_my - 1);
#pragma unroll
            for (int kb2 = 0; kb2 < KB; ++kb2) pack_p<T, 1, NB>(pa[kb2], s, kb2);
            mbar_wait(v_full(sv), phase(n_my - 1));
#pragma unroll
            for (int i = 0; i < D / 2; ++i) reg_fence(of[i]);
            wgmma_fence();
            issue_pv(sv);
            wgmma_commit();
            wgmma_wait0();
#pragma unroll
            for (int i = 0; i < D / 2; ++i) reg_fence(of[i]);
            release(v_empty(sv));
        }
        // Tiles this warpgroup does not multiply still pass through it: wait for each (so that the empty barriers
        // count releases of one tile at a time) and release it.
        for (int j = n_my; j < n_kv; ++j) {
            const int st = stage(j);
            const u32 ph = phase(j);
            mbar_wait(k_full(st), ph);
            release(k_empty(st));
            mbar_wait(v_full(st), ph);
            release(v_empty(st));
        }
        if (tid == 0) TSTAMP(4);
        if (wgrow0 + 64 <= L) {
            // All 64 rows of this warpgroup lie in the segment: O / l goes through this warpgroup's own rows of the Q
            // tile (free once its last QK is done) in the same swizzled layout, and out with one TMA copy per region.
            // (A partial last tile keeps the per-thread stores below: a copy of whole boxes would write rows of the
            // next segment.)
            const u32 so = sQ + qb * Q_BYTES + wg * 64 * 128;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float l = l_i[0][h];
                l += __shfl_xor_sync(0xffffffffu, l, 1);
                l += __shfl_xor_sync(0xffffffffu, l, 2);
                const float inv = 1.f / l;
                const int r = (warp & 3) * 16 + g + 8 * h;  // row inside the warpgroup's 64
#pragma unroll
                for (int db = 0; db < DB; ++db) {
                    const u32 addr = so + (db >> 3) * (BM * 128) + (r >> 3) * 1024 + (r & 7) * 128 +
                                     (((db & 7) ^ (r & 7)) << 4) + 4 * t4;
                    const u32 val = Mma<T>::pack(acc[0][db][2 * h] * inv, acc[0][db][2 * h + 1] * inv);
                    asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(val) : "memory");
                }
                if (lse != nullptr && t4 == 0)
                    lse[(size_t)(seg_start + wgrow0 + r) * Hq + head] = (m_i[0][h] + log2f(l)) * 0.69314718055994531f;
            }
            fence_proxy_async_shared();  // these writes, then the copy engine's reads
            bar_sync(1 + wg, 128);
            if ((warp & 3) == 0 && lane == 0) {
#pragma unroll
                for (int reg = 0; reg < NREG; ++reg)
                    tma_store_3d(tm_o, 64 * reg, head, seg_start + wgrow0, so + reg * (BM * 128));
                tma_store_commit_and_wait_read();
            }
        } else if (wgrow0 < L) {
            store_rows<T, 1, DB, D>(acc, m_i, l_i, o, lse, seg_start, wrow0, L, Hq, head, g, t4);
        }
        __syncwarp();
        // this warp is done with the round's Q buffer (warp 0's lane 0 only after its TMA store has read the O staged
        // there): the producer may load the tile QBUF rounds on into it
        if (lane == 0) mbar_arrive(q_empty(qb));
        t0 += n_kv;
    }
    if (tid == 0) TSTAMP(5);
#endif
}

}  // namespace attn
