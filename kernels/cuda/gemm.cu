// Skinny GEMM for decode: y[m, n] = sum_k x[m, k] w[n, k] for a handful of rows m < M <= 32 (the batch of one
// decode step) and a weight w [N, K] read once from memory. cuBLAS picks split-K tile GEMMs for these shapes and
// reaches ~30 % of the copy rate on the 1-16 MB matrices of a decode step (H200, 0.8B shapes); this kernel streams
// the weight with 16-byte loads, four steps in flight per warp, and multiplies on the tensor cores
// (mma.sync m16n8k16: W is the 16-row A operand, x^T the 8-column B operand; columns >= M are zeros).
//
// The k order inside one 32-wide step is permuted: thread (g = lane / 4, q = lane % 4) loads the 8 contiguous
// elements 8q .. 8q+7 of W rows g and g + 8 and of x row g; elements 0..3 feed the first mma as its logical
// k = 2q, 2q+1, 2q+8, 2q+9 and 4..7 the second. A and B use the same permutation, so the dot product is unchanged.
// The CTA's 8 warps split K (warp w takes steps w, w + 8, ...) and add their partial tiles in shared memory.
//
// SILU: w = [gate; up] ([2N, K], the fused gate/up weight) and y[m, n] = silu(g) * u with g, u the products of
// rows n and N + n, each rounded to T first (as a GEMM output then silu_mul_fused would see them).
// Programmatic dependent launch (sm_90, launched with pdl=True): the weight loads of a warp's first UNROLL steps
// do not depend on the previous kernel, so they are issued before griddepcontrol.wait (the weight stream starts
// while the previous kernel finishes); x is read and y written only after it. Right after the wait the kernel lets
// its own dependents launch (e.g. down_proj behind gate_up). Without a programmatic launch the wait returns at once.
// XOP: what the x operand is, computed as it is loaded (each CTA redoes it: x is small and read from L2), rounded to
// T as the op that would otherwise store it (one kernel less a projection):
//   X_PLAIN     x itself;
//   X_SIGMOID   o * sigmoid(gate) (the attention output gate folded into o_proj; activations' sigmoid_gate):
//               element k of x row m is x[m, k] and its gate other[m * so + (k / gd) * gh + k % gd] (gate = the
//               per-head second half of q_proj's output: gd = head dim, gh = 2 gd); gd % 8 == 0;
//   X_ADD_RMS   add_rms_norm(x, residual = other, weight xn.w)'s y: e = round(residual + x), y = e * rstd[m] *
//               (xn.w_off + w[k]) with rstd[m] over the row of e (the norm before in_proj / qkv_proj / gate_up);
//               the CTA at (0, 0) also writes e to xn.res_out (the residual stream); K % 256 == 0;
//   X_GATED_RMS gated_rms_norm(x, z = other, xn.w)'s y: per group of gd: p = round(w[k % gd] * round(x * rstd)),
//               y = p * silu(z) (the DeltaNet output norm before out_proj); z[m * so + (k / gd) * gh + k % gd];
//               gd / 8 a power of two <= 32.
// The norms' statistics (fp32 sums of squares of a row or group, summed in a fixed order) are computed after the
// wait into shared memory (a barrier every warp reaches before the main loop), with the first steps' weights
// already loaded into registers before the wait as in the other builds.
// Output: y [M, N] with row stride sy, or split by columns into up to 4 tensors (a fused projection's q | k | v or
// conv input | z | b | a, each then contiguous: no copies): columns [cut_j, cut_j+1) go to out.y[j] (row stride
// out.sy[j]) at column n - cut_j; unused cuts are N.
// Requires K % 32 == 0, x rows and w 16-byte aligned, sx % 8 == 0.
#include "include/convert.cuh"
#include "include/mma_sm80.cuh"
#include "include/ptx.cuh"

namespace gemm {
using namespace qkern;

constexpr int WARPS = 8;    // per CTA, splitting K
constexpr int ROWS = 16;    // output features per CTA (the mma's M)
constexpr int KSTEP = 32;   // k per warp step (two m16n8k16)

// o * sigmoid(g) for 8 16-bit elements, rounded once (activations.cu's gate_op SIGMOID_GATE)
template <typename T>
__device__ __forceinline__ uint4 sigmoid_gated(const uint4 o, const uint4 g) {
    const T* ov = reinterpret_cast<const T*>(&o);
    const T* gv = reinterpret_cast<const T*>(&g);
    uint4 r;
    T* rv = reinterpret_cast<T*>(&r);
#pragma unroll
    for (int i = 0; i < 8; ++i) rv[i] = from_f<T>(__fdividef(to_f(ov[i]), 1.f + __expf(-to_f(gv[i]))));
    return r;
}

template <typename T>
struct SplitOut {
    T* y[4];
    long long sy[4];
    int cut[3];  // starts of parts 1..3 (part 0 starts at 0)
};

enum XOp { X_PLAIN = 0, X_SIGMOID = 1, X_ADD_RMS = 2, X_GATED_RMS = 3 };

struct XNorm {  // X_ADD_RMS / X_GATED_RMS: the norm's weight, the residual output (X_ADD_RMS), eps, weight offset
    const void* w;
    void* res_out;
    long long sro;
    float eps, w_off;
};

constexpr int STAT_MAX = 2048;  // norm partial sums a CTA keeps: M K / 256 (X_ADD_RMS), M K / gd (X_GATED_RMS)

__device__ __forceinline__ float silu_fast(float z) { return __fdividef(z, 1.f + __expf(-z)); }

// The 8 elements of x operand vector v (x's 8 at column k of row m, other's, the norm weight's, the statistic)
template <typename T, int XOP>
__device__ __forceinline__ uint4 x_transform(const uint4 v, const uint4 o, const uint4 nw, float st, float w_off) {
    if constexpr (XOP == X_PLAIN) {
        return v;
    } else if constexpr (XOP == X_SIGMOID) {
        return sigmoid_gated<T>(v, o);
    } else {
        const T* xv = reinterpret_cast<const T*>(&v);
        const T* ov = reinterpret_cast<const T*>(&o);
        const T* wv = reinterpret_cast<const T*>(&nw);
        uint4 r;
        T* rv = reinterpret_cast<T*>(&r);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            if constexpr (XOP == X_ADD_RMS) {  // norms.cu's ADD_RMS: f * rstd * (w_offset + w), rounded once
                const float e = round_to<T>(to_f(ov[i]) + to_f(xv[i]));
                rv[i] = from_f<T>(e * st * (w_off + to_f(wv[i])));
            } else {  // GATED_RMS: p = round(w * round(f * rstd)); p * silu(z)
                const float p = round_to<T>(to_f(wv[i]) * round_to<T>(to_f(xv[i]) * st));
                rv[i] = from_f<T>(p * silu_fast(to_f(ov[i])));
            }
        }
        return r;
    }
}

// NT: 8-row tiles of x (M <= 8 NT): 1, 2 or 4 (decode batches up to 8, 16, 32). U: steps whose loads a warp
// issues before their mmas (bytes in flight): 8 for grids of fewer CTAs than ~2 per SM (N <= ~4k: each CTA must keep
// more loads in flight to draw its share of the bandwidth), else 4; 2 above 8 rows (registers).
// SPLIT > 1 (skinny_gemm_split): the CTAs of a cluster of SPLIT along y split K (CTA z's warps take steps
// warp + 8 z, + 8 SPLIT, ...: the N <= ~2k projections have too few 16-row blocks to fill the SMs), and add their
// partial tiles through distributed shared memory (each CTA finishes the rows r % SPLIT == its rank).
// RS = 2 (plain product only): a CTA computes two 16-row blocks (32 output features, the SILU build's registers):
// half the CTAs for the large-N projections of K ~1k, whose 16-row grids take more than one wave of an H200.
template <typename T, bool SILU, int NT, int U, int XOP, int SPLIT, int RS = 1>
__device__ __forceinline__ void skinny_body(const T* __restrict__ x, long long sx, const T* __restrict__ w,
                                            const SplitOut<T>& out, int M, int N, int K, const T* __restrict__ other,
                                            long long so, int gd, int gh, const XNorm& xn) {
    static_assert(RS == 1 || !SILU, "two row blocks a CTA: plain product only");
    constexpr int SETS = SILU ? 2 : RS;
    constexpr int COLS = 8 * NT;
    constexpr int STRIDE = WARPS * SPLIT;  // steps between two of one warp
    constexpr bool NORM = XOP == X_ADD_RMS || XOP == X_GATED_RMS;
    __shared__ float red[WARPS][SETS][ROWS][COLS];
    __shared__ float part[SPLIT > 1 ? SETS : 1][ROWS][SPLIT > 1 ? COLS : 1];  // SPLIT: this CTA's tile
    __shared__ float stat[NORM ? STAT_MAX : 1];  // NORM: partial sums, then rstd per group (X_GATED_RMS)
    __shared__ float rstd_row[NORM ? 8 * NT : 1];  // X_ADD_RMS: rstd per row
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const int z = SPLIT > 1 ? (int)cluster_ctarank() : 0;
    const int n0 = blockIdx.x * ROWS * RS;
    // Rows past N read row N - 1 and x rows past M read row 0: their products land in outputs that are never
    // stored (output (n, m) depends on w row n and x row m only), so the loads need no conditions. Set s is the
    // up half (rows N + n) for SILU, the next 16-row block for RS = 2.
    const T* wr[SETS][2];
#pragma unroll
    for (int s = 0; s < SETS; ++s)
#pragma unroll
        for (int h = 0; h < 2; ++h)
            wr[s][h] = w + (SILU ? (size_t)s * N + min(n0 + g + 8 * h, N - 1)
                                 : (size_t)min(n0 + ROWS * s + g + 8 * h, N - 1)) * K + 8 * q;
    const T* xr[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) xr[j] = x + (size_t)(g + 8 * j < M ? g + 8 * j : 0) * sx + 8 * q;
    const T* gr[NT];  // XOP != X_PLAIN: the other operand's rows of those x rows
#pragma unroll
    for (int j = 0; j < NT; ++j)
        gr[j] = XOP != X_PLAIN ? other + (size_t)(g + 8 * j < M ? g + 8 * j : 0) * so : nullptr;
    const T* nw = reinterpret_cast<const T*>(xn.w);
    // the x operand's 8 elements of step st_ for tile j (XOP applied)
    auto load_x = [&](int st_, int j) {
        const uint4 v = load_l2(xr[j] + (size_t)st_ * KSTEP);
        if constexpr (XOP == X_PLAIN) {
            return v;
        } else {
            const int k = st_ * KSTEP + 8 * q, m = g + 8 * j < M ? g + 8 * j : 0;
            const uint4 o = load_l2(gr[j] + (XOP == X_ADD_RMS ? (size_t)k : (size_t)(k / gd) * gh + k % gd));
            uint4 wv = o;
            float st = 0.f;
            if constexpr (XOP == X_ADD_RMS) {
                wv = *reinterpret_cast<const uint4*>(nw + k);
                st = rstd_row[m];
            } else if constexpr (XOP == X_GATED_RMS) {
                wv = *reinterpret_cast<const uint4*>(nw + k % gd);
                st = stat[m * (K / gd) + k / gd];
            }
            return x_transform<T, XOP>(v, o, wv, st, xn.w_off);
        }
    };
    float c[SETS][NT][4];
#pragma unroll
    for (int s = 0; s < SETS; ++s)
#pragma unroll
        for (int j = 0; j < NT; ++j) c[s][j][0] = c[s][j][1] = c[s][j][2] = c[s][j][3] = 0.f;
    const int steps = K / KSTEP;
    int st = warp + WARPS * z;
    bool waited = false;
    // NORM: the first U steps' weights are loaded (into a0) before the wait, as the other builds do in their first
    // loop pass; the statistics then need a barrier every warp reaches, so they come before the loop, which takes
    // its first pass's weights from a0
    uint4 a0[NORM ? U : 1][SETS][2];
    bool first = NORM;
    if constexpr (NORM) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (st + u * STRIDE < steps) {
                const size_t off = (size_t)(st + u * STRIDE) * KSTEP;
#pragma unroll
                for (int s = 0; s < SETS; ++s)
#pragma unroll
                    for (int h = 0; h < 2; ++h) a0[u][s][h] = load_stream(wr[s][h] + off);
            }
        }
        wait_and_release();
        waited = true;
        // sums of squares of 32-vector chunks of a row (X_ADD_RMS) or of a group of gd / 8 vectors (X_GATED_RMS),
        // PV vectors a thread a round with their loads first (1 for SILU: its first steps' weights take the
        // registers); a chunk or group is lanes of one warp
        constexpr int PV = SILU ? 1 : 4;
        const int kv = K / 8, total = M * kv, seg = XOP == X_ADD_RMS ? 32 : gd / 8;
        T* ro = reinterpret_cast<T*>(xn.res_out);
        const bool write_res = XOP == X_ADD_RMS && blockIdx.x == 0 && blockIdx.y == 0;
        for (int base = 0; base < total; base += PV * WARPS * 32) {
            uint4 xv[PV], ov[PV];
#pragma unroll
            for (int i = 0; i < PV; ++i) {
                const int v = base + threadIdx.x + i * WARPS * 32;
                if (v < total) {
                    const int m = v / kv, kk = (v % kv) * 8;
                    xv[i] = load_l2(x + (size_t)m * sx + kk);
                    if (XOP == X_ADD_RMS) ov[i] = load_l2(other + (size_t)m * so + kk);
                }
            }
#pragma unroll
            for (int i = 0; i < PV; ++i) {
                const int v = base + threadIdx.x + i * WARPS * 32;
                float ss = 0.f;
                if (v < total) {
                    const T* xe = reinterpret_cast<const T*>(&xv[i]);
                    if constexpr (XOP == X_ADD_RMS) {
                        const T* oe = reinterpret_cast<const T*>(&ov[i]);
                        uint4 e;
                        T* ee = reinterpret_cast<T*>(&e);
#pragma unroll
                        for (int k2 = 0; k2 < 8; ++k2) {
                            ee[k2] = from_f<T>(to_f(oe[k2]) + to_f(xe[k2]));
                            const float f = to_f(ee[k2]);
                            ss += f * f;
                        }
                        if (write_res) {
                            const int m = v / kv, kk = (v % kv) * 8;
                            *reinterpret_cast<uint4*>(ro + (size_t)m * xn.sro + kk) = e;
                        }
                    } else {
#pragma unroll
                        for (int k2 = 0; k2 < 8; ++k2) {
                            const float f = to_f(xe[k2]);
                            ss += f * f;
                        }
                    }
                }
                for (int o2 = seg >> 1; o2 > 0; o2 >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o2);
                if (v < total && lane % seg == 0) stat[v / seg] = ss;
            }
        }
        __syncthreads();
        if constexpr (XOP == X_ADD_RMS) {  // the row's chunks in order
            for (int m = threadIdx.x; m < M; m += WARPS * 32) {
                float ss = 0.f;
                for (int c2 = 0; c2 < kv / 32; ++c2) ss += stat[m * (kv / 32) + c2];
                rstd_row[m] = rsqrtf(ss / K + xn.eps);
            }
        } else {
            for (int p = threadIdx.x; p < M * (K / gd); p += WARPS * 32) stat[p] = rsqrtf(stat[p] / gd + xn.eps);
        }
        __syncthreads();
    }
    for (; st + (U - 1) * STRIDE < steps; st += U * STRIDE) {  // U steps' loads, then their mmas
        uint4 a[U][SETS][2], b[U][NT];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const size_t off = (size_t)(st + u * STRIDE) * KSTEP;
#pragma unroll
            for (int s = 0; s < SETS; ++s)
#pragma unroll
                for (int h = 0; h < 2; ++h) a[u][s][h] = first ? a0[NORM ? u : 0][s][h] : load_stream(wr[s][h] + off);
        }
        first = false;
        if (!waited) {  // the first weight loads are in flight: now wait for x
            wait_and_release();
            waited = true;
        }
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int j = 0; j < NT; ++j) b[u][j] = load_x(st + u * STRIDE, j);
#pragma unroll
        for (int u = 0; u < U; ++u) mma_k32<T, SETS, NT>(c, a[u], b[u]);
    }
    if (st < steps) {  // this warp's last < U steps: the same, with the loads of the steps past K skipped
        uint4 a[U][SETS][2], b[U][NT];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (st + u * STRIDE < steps) {
                const size_t off = (size_t)(st + u * STRIDE) * KSTEP;
#pragma unroll
                for (int s = 0; s < SETS; ++s)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        a[u][s][h] = first ? a0[NORM ? u : 0][s][h] : load_stream(wr[s][h] + off);
            }
        }
        if (!waited) {
            wait_and_release();
            waited = true;
        }
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (st + u * STRIDE < steps)
#pragma unroll
                for (int j = 0; j < NT; ++j) b[u][j] = load_x(st + u * STRIDE, j);
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (st + u * STRIDE < steps) mma_k32<T, SETS, NT>(c, a[u], b[u]);
    }
    if (!waited) wait_and_release();  // a warp without steps (K < 32 WARPS) still waits before the stores
    // c[s][j][0], [1]: row g, x rows 8j + 2q, 8j + 2q + 1; c[s][j][2], [3]: row g + 8
#pragma unroll
    for (int s = 0; s < SETS; ++s) {
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            red[warp][s][g][8 * j + 2 * q] = c[s][j][0];
            red[warp][s][g][8 * j + 2 * q + 1] = c[s][j][1];
            red[warp][s][g + 8][8 * j + 2 * q] = c[s][j][2];
            red[warp][s][g + 8][8 * j + 2 * q + 1] = c[s][j][3];
        }
    }
    __syncthreads();
    if constexpr (SPLIT > 1) {  // this CTA's partial tile, then the cluster's: every CTA's part is complete
        for (int t = threadIdx.x; t < ROWS * COLS; t += WARPS * 32) {
            const int r = t / COLS, m = t % COLS;
#pragma unroll
            for (int s = 0; s < SETS; ++s) {
                float acc = 0.f;
#pragma unroll
                for (int i = 0; i < WARPS; ++i) acc += red[i][s][r][m];
                part[SETS > 1 ? s : 0][r][m] = acc;
            }
        }
        cluster_barrier();
    }
    for (int t = threadIdx.x; t < ROWS * COLS; t += WARPS * 32) {
        const int r = t / COLS, m = t % COLS, n = n0 + r;
        if (m < M && n < N && (SPLIT == 1 || r % SPLIT == z)) {  // (RS = 2: row n + 16 is checked below)
            float v[SETS];
#pragma unroll
            for (int s = 0; s < SETS; ++s) {
                float acc = 0.f;
                if constexpr (SPLIT > 1) {  // the cluster's parts in rank order (the same sum in every CTA)
#pragma unroll
                    for (int i = 0; i < SPLIT; ++i) acc += ld_cluster_f32(&part[SETS > 1 ? s : 0][r][m], i);
                } else {
#pragma unroll
                    for (int i = 0; i < WARPS; ++i) acc += red[i][s][r][m];
                }
                v[s] = acc;
            }
            auto store = [&](int nn, float val) {
                const int j = (nn >= out.cut[0]) + (nn >= out.cut[1]) + (nn >= out.cut[2]);
                const int c0 = j == 0 ? 0 : out.cut[j - 1];
                out.y[j][(size_t)m * out.sy[j] + (nn - c0)] = from_f<T>(val);
            };
            if (SILU) {  // silu_mul_fused's formula on the rounded products
                const float gv = round_to<T>(v[0]), uv = round_to<T>(v[SETS - 1]);
                store(n, __fdividef(gv, 1.f + __expf(-gv)) * uv);
            } else {
                store(n, v[0]);
                if (RS == 2 && n + ROWS < N) store(n + ROWS, v[SETS - 1]);
            }
        }
    }
    if constexpr (SPLIT > 1) cluster_barrier();  // no CTA leaves while another may still read its part
}

// grid (ceil(N / (16 RS)))
// pdl-early: w -- the weight, streamed while the kernel before finishes
template <typename T, bool SILU, int NT, int U, int XOP, int RS = 1>
__global__ void __launch_bounds__(WARPS * 32) skinny_gemm(const T* __restrict__ x, long long sx,
                                                        const T* __restrict__ w, const SplitOut<T> out,
                                                        int M, int N, int K, const T* __restrict__ other,
                                                        long long so, int gd, int gh, const XNorm xn) {
    skinny_body<T, SILU, NT, U, XOP, 1, RS>(x, sx, w, out, M, N, K, other, so, gd, gh, xn);
}

// grid (ceil(N / 16), SPLIT): clusters of SPLIT CTAs along y, one 16-row block, K split between them. Before
// sm_90 (no clusters; kernels/gemm.py launches it only on sm_90) the y = 0 CTAs do the whole product alone.
// pdl-early: w -- the weight, streamed while the kernel before finishes
template <typename T, bool SILU, int NT, int U, int XOP, int SPLIT>
__global__ void QKERN_CLUSTER_Y(SPLIT) __launch_bounds__(WARPS * 32) skinny_gemm_split(
    const T* __restrict__ x, long long sx, const T* __restrict__ w, const SplitOut<T> out, int M, int N, int K,
    const T* __restrict__ other, long long so, int gd, int gh, const XNorm xn) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    skinny_body<T, SILU, NT, U, XOP, SPLIT>(x, sx, w, out, M, N, K, other, so, gd, gh, xn);
#else
    if (blockIdx.y == 0) skinny_body<T, SILU, NT, U, XOP, 1>(x, sx, w, out, M, N, K, other, so, gd, gh, xn);
#endif
}

}  // namespace gemm
