// Packed varlen attention in plain fp32 (no tensor cores, so no tf32 rounding): the exactness path.
//
//   o[t, h, :] = softmax_j(scale * q[t, h, :] . k[j, h/g, :]) v[j, h/g, :]
//   over keys j of the segment of t (cu_seqlens), j <= t when CAUSAL; g = Hq / Hkv (GQA).
//
// Layout: q [T, Hq, D], k/v [T, Hkv, D], o [T, Hq, D] fp32 contiguous, 16-byte aligned; lse [T, Hq] fp32
// (optional, natural log of the softmax denominator). D is a multiple of 8, at most 256.
//
// Grid (row tiles, Hq, segments): a CTA is BM = NW * R query rows of one head in one segment; CTAs past
// their segment's end exit at once, so the host only needs an upper bound on the longest segment. Causal
// grids run the tiles backwards, so the heaviest (last) tiles start first.
// The CTA stages its Q rows once, then walks the segment's keys in tiles of BN = 32 rows (K and V in shared
// memory, zero-filled past the segment end so masked keys contribute exactly 0). Warp w owns R consecutive
// query rows:
//   * scores: lane j computes all R scores of key j of the tile (K row from shared memory, Q rows read as
//     broadcasts), so no reduction is needed for the dot products;
//   * online softmax in fp32: the tile max by a warp reduction; each lane keeps a partial denominator for its
//     keys (rescaled by the same warp-uniform factor), summed across the warp once at the end;
//   * P V: p goes through a per-warp shared buffer; lane c owns output columns c, c + 32, ... of all R rows.
// Accuracy: expf/logf and a true division (no fast math), fp32 fma accumulation in index order.
#include "include/convert.cuh"
#include "include/reduce.cuh"

namespace attn32 {
using namespace qkern;

constexpr int NW = 4;   // warps per CTA
constexpr int R = 8;    // query rows per warp
constexpr int BM = NW * R;
constexpr int BN = 32;  // keys per tile: one per lane
constexpr int PS = R + 4;  // per-key stride of the P buffer: (PS / 4) odd, so the 16-byte stores never conflict

// Dynamic shared memory in floats; the wrapper computes the same number (kernels/attention.py, fp32_smem_bytes).
template <int D>
struct Smem {
    static constexpr int KS = D + 4;  // K row stride: (KS / 4) odd, so lane j's 16-byte reads of row j never conflict
    static constexpr int Q = 0;                  // [BM][D]
    static constexpr int K = Q + BM * D;         // [BN][KS]
    static constexpr int V = K + BN * KS;        // [BN][D]
    static constexpr int P = V + BN * D;         // [NW][BN][PS]
    static constexpr int FLOATS = P + NW * BN * PS;
};

// CTAs per SM the register allocation must allow (shared memory allows about as many): the most that
// compiles without spills for each head dim.
template <int D>
struct MinBlocks {
    static constexpr int value = D <= 80 ? 4 : D <= 128 ? 3 : 2;
};

template <int D, bool CAUSAL>
__global__ void __launch_bounds__(NW * 32, MinBlocks<D>::value)
attn_fp32(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
          float* __restrict__ o, float* __restrict__ lse, const int* __restrict__ cu_seqlens,
          int Hq, int Hkv, float scale) {
    static_assert(D % 8 == 0 && D >= 8 && D <= 256 && R % 4 == 0, "head dim: a multiple of 8 up to 256");
    constexpr int D4 = D / 4;             // float4 chunks per row
    constexpr int NC = (D + 31) / 32;     // output columns per lane
    using S = Smem<D>;
    extern __shared__ float4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    float* Qs = smem + S::Q;
    float* Ks = smem + S::K;
    float* Vs = smem + S::V;

    const int seg = blockIdx.z, h = blockIdx.y;
    const int tile = CAUSAL ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    const int seg_start = cu_seqlens[seg];
    const int seg_len = cu_seqlens[seg + 1] - seg_start;
    const int row0 = tile * BM;  // first query row of the CTA, within the segment
    if (row0 >= seg_len) return;
    const int hk = h / (Hq / Hkv);
    const int nkeys = CAUSAL ? min(seg_len, row0 + BM) : seg_len;  // keys any row of this CTA may see
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;

    // Q tile, zero rows past the segment end (their results are never stored)
    for (int i = tid; i < BM * D4; i += NW * 32) {
        const int r = i / D4, c = i % D4;
        float4 val = make_float4(0.f, 0.f, 0.f, 0.f);
        if (row0 + r < seg_len)
            val = reinterpret_cast<const float4*>(q + ((size_t)(seg_start + row0 + r) * Hq + h) * D)[c];
        reinterpret_cast<float4*>(Qs + r * D)[c] = val;
    }

    float m[R], l[R], acc[R][NC];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        m[r] = f32_neg_inf();
        l[r] = 0.f;
#pragma unroll
        for (int i = 0; i < NC; ++i) acc[r][i] = 0.f;
    }
    const float4* qw = reinterpret_cast<const float4*>(Qs + w * R * D);
    const float4* krow = reinterpret_cast<const float4*>(Ks + lane * S::KS);
    float* Pw = smem + S::P + w * BN * PS;
    const int wrow0 = row0 + w * R;  // first query row of this warp, within the segment

    for (int kt = 0; kt < nkeys; kt += BN) {
        __syncthreads();  // the previous tile is consumed (and, first time, Q is written)
        for (int i = tid; i < BN * D4; i += NW * 32) {
            const int j = i / D4, c = i % D4;
            float4 kk = make_float4(0.f, 0.f, 0.f, 0.f), vv = kk;
            if (kt + j < seg_len) {
                const size_t off = ((size_t)(seg_start + kt + j) * Hkv + hk) * D;
                kk = reinterpret_cast<const float4*>(k + off)[c];
                vv = reinterpret_cast<const float4*>(v + off)[c];
            }
            reinterpret_cast<float4*>(Ks + j * S::KS)[c] = kk;
            reinterpret_cast<float4*>(Vs + j * D)[c] = vv;
        }
        __syncthreads();

        // scores of key kt + lane against the warp's R rows
        float s[R];
#pragma unroll
        for (int r = 0; r < R; ++r) s[r] = 0.f;
#pragma unroll 2
        for (int c = 0; c < D4; ++c) {
            const float4 kk = krow[c];
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float4 qq = qw[r * D4 + c];
                s[r] = fmaf(qq.x, kk.x, s[r]);
                s[r] = fmaf(qq.y, kk.y, s[r]);
                s[r] = fmaf(qq.z, kk.z, s[r]);
                s[r] = fmaf(qq.w, kk.w, s[r]);
            }
        }

        const int key = kt + lane;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const bool ok = key < seg_len && (!CAUSAL || key <= wrow0 + r);
            const float sc = ok ? s[r] * scale : f32_neg_inf();
            const float m_new = fmaxf(m[r], warp_max(sc));
            // every row sees key 0 of its segment in the first tile, so m_new is finite; guard anyway
            const float m_use = m_new == f32_neg_inf() ? 0.f : m_new;
            const float alpha = expf(m[r] - m_use);  // 0 on the first tile (m = -inf)
            const float p = expf(sc - m_use);         // 0 for masked keys
            l[r] = l[r] * alpha + p;                  // this lane's keys only; summed over the warp at the end
#pragma unroll
            for (int i = 0; i < NC; ++i) acc[r][i] *= alpha;
            m[r] = m_new;
            s[r] = p;
        }
        float4* pst = reinterpret_cast<float4*>(Pw + lane * PS);
#pragma unroll
        for (int r4 = 0; r4 < R / 4; ++r4)
            pst[r4] = make_float4(s[4 * r4], s[4 * r4 + 1], s[4 * r4 + 2], s[4 * r4 + 3]);
        __syncwarp();

        // acc[r][i] += sum_j p[r][j] * V[j][lane + 32 i]
#pragma unroll 4
        for (int j = 0; j < BN; ++j) {
            float p[R];
#pragma unroll
            for (int r4 = 0; r4 < R / 4; ++r4) {
                const float4 pp = reinterpret_cast<const float4*>(Pw + j * PS)[r4];
                p[4 * r4] = pp.x, p[4 * r4 + 1] = pp.y, p[4 * r4 + 2] = pp.z, p[4 * r4 + 3] = pp.w;
            }
#pragma unroll
            for (int i = 0; i < NC; ++i) {
                const int c = lane + 32 * i;
                const float vv = (D % 32 == 0 || c < D) ? Vs[j * D + c] : 0.f;
#pragma unroll
                for (int r = 0; r < R; ++r) acc[r][i] = fmaf(p[r], vv, acc[r][i]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int row = wrow0 + r;
        const float den = warp_sum(l[r]);
        if (row >= seg_len) continue;  // warp-uniform
        const size_t t = (size_t)(seg_start + row);
        float* orow = o + (t * Hq + h) * D;
#pragma unroll
        for (int i = 0; i < NC; ++i) {
            const int c = lane + 32 * i;
            if (D % 32 == 0 || c < D) orow[c] = acc[r][i] / den;
        }
        if (lse != nullptr && lane == 0) lse[t * Hq + h] = m[r] + logf(den);
    }
}

}  // namespace attn32
