// The Gated DeltaNet's short causal conv: depthwise, K = 4 taps, fused SiLU, over packed variable-length
// sequences, with the per-sequence state (the K-1 inputs before each sequence) read at the start and written at
// the end. Semantics: reference/conv1d.py (causal_conv1d).
//   y[t, c] = silu( sum_j w[c, j] * xs[p + j, c] ),  xs = concat(state[s, c, :], x[sequence s, c])
//   new_state[s, c, :] = the last K-1 entries of xs (the old state's tail for sequences shorter than K-1)
// fp32 math, one rounding on store.
//
// Grid: x = channel blocks (BLOCK threads x VEC channels), y = sequence s, z = chunks of CH positions of the
// sequence (gridDim.z covers the host's max_seqlen hint, or T; chunks past the sequence's end exit). cu_seqlens is
// read on the device only, so the launch needs no host sync and can be replayed from a CUDA graph.
// The state: only chunk 0 of a sequence reads the old state (chunk z >= 1 starts at position >= CH >= K-1, so all
// its inputs come from x), and the same thread writes the new state after it has read the old one. So
// state_out may be the state itself (in-place decode update) without a race, and a zero-length sequence's chunk 0
// still exists and copies (or keeps) its state.
#include "include/convert.cuh"
#include "include/cp_async.cuh"
#include "include/ptx.cuh"

namespace conv1d {
using namespace qkern;

using qkern::from_f;
using qkern::to_f;
using qkern::Vec;

constexpr int CONV_K = 4;


// SiLU with the fast exp and divide: two MUFU ops per element keep the kernel memory-bound (the IEEE divide
// would not); relative error ~1e-6, far inside the fp32 tolerance. a -> -inf gives -0.
__device__ __forceinline__ float silu_f(float a) { return __fdividef(a, 1.f + __expf(-a)); }

__device__ __forceinline__ long long load_index(const void* p, int is64, int i) {
    return is64 ? reinterpret_cast<const long long*>(p)[i] : (long long)reinterpret_cast<const int*>(p)[i];
}

// VEC consecutive channels of N taps each, stored channel-major (p[e * N + j], the layout of the weights [C, K]
// and the state [C, K-1]), loaded as N vectors of VEC elements and transposed: out[j][e] = p[e * N + j].
template <typename T, int VEC, int N>
__device__ __forceinline__ void load_channels(const T* p, float (&out)[N][VEC]) {
    float raw[VEC * N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
        float part[VEC];
        load_f<T, VEC>(p + j * VEC, part);
#pragma unroll
        for (int e = 0; e < VEC; ++e) raw[j * VEC + e] = part[e];
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e)
#pragma unroll
        for (int j = 0; j < N; ++j) out[j][e] = raw[e * N + j];
}

// One thread: VEC consecutive channels of one chunk of CH positions. The state rows of VEC channels
// ([VEC, K-1], contiguous) are moved as K-1 vectors of VEC elements. x rows have stride x_stride elements.
// Loads: ASYNC (16-byte vectors only): the chunk's CH + K-1 rows go to shared memory by cp.async, all in flight at
// once (each thread copies and later reads only its own column, so no barrier is needed); else U rows at a time
// into registers. The first keeps ~300 bytes per thread in flight without spending registers on them.
// __launch_bounds__(128, 4): at most 128 registers, so at least 4 CTAs (16 warps) per SM; the VEC = 8 16-bit body
// needs about that many on the register path (weights 4 x 8 and the window 3 x 8 in fp32, plus U packed loads).
template <typename T, int VEC, int CH, int U, bool ASYNC>
__global__ void __launch_bounds__(128, 4) causal_conv1d_kernel(
    const T* __restrict__ x, long long x_stride, const T* __restrict__ w, const void* __restrict__ cu, int cu64,
    const T* state, T* state_out, T* __restrict__ y, int C, int nchunks) {
    constexpr int KM = CONV_K - 1;
    __shared__ Vec<T, VEC> tile[ASYNC ? CH + KM : 1][ASYNC ? 128 : 1];  // row i: position p0 - KM + i
    const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (c0 >= C) return;
    const int s = blockIdx.y;
    const long long start = load_index(cu, cu64, s);
    const int L = (int)(load_index(cu, cu64, s + 1) - start);

    float wt[CONV_K][VEC];  // wt[j][e] = w[c0 + e, j]
    load_channels<T, VEC, CONV_K>(w + (long long)c0 * CONV_K, wt);

    for (int z = blockIdx.z; z < nchunks; z += gridDim.z) {
        const int p0 = z * CH;
        if (p0 >= L && !(z == 0)) break;  // chunk 0 always runs: it owns the state
        const int p1 = min(p0 + CH, L);
        if constexpr (ASYNC) {
#pragma unroll
            for (int i = 0; i < CH + KM; ++i) {
                const int pos = p0 - KM + i;
                const bool ok = pos >= 0 && pos < p1;
                qkern::cp_async16((unsigned)__cvta_generic_to_shared(&tile[i][threadIdx.x]),
                                  ok ? x + (start + pos) * x_stride + c0 : x, ok);
            }
            qkern::cp_async_commit();  // waited for below, after the state loads are issued too (one round trip)
        }
        // win[m] = xs input m+1 steps before position p0 (win[KM-1] is the oldest)
        float win[KM][VEC];
        float old[KM][VEC];  // chunk 0: the old state, oldest first (zeros without a state)
        if (z == 0) {
            if (state != nullptr) {
                load_channels<T, VEC, KM>(state + ((long long)s * C + c0) * KM, old);
            } else {
#pragma unroll
                for (int m = 0; m < KM; ++m)
#pragma unroll
                    for (int e = 0; e < VEC; ++e) old[m][e] = 0.f;
            }
#pragma unroll
            for (int m = 0; m < KM; ++m)
#pragma unroll
                for (int e = 0; e < VEC; ++e) win[m][e] = old[KM - 1 - m][e];
        }
        if constexpr (ASYNC) qkern::cp_async_wait<0>();
        if (z != 0) {  // the window comes from x
            if constexpr (ASYNC) {
#pragma unroll
                for (int m = 0; m < KM; ++m)
#pragma unroll
                    for (int e = 0; e < VEC; ++e) win[m][e] = to_f(tile[KM - 1 - m][threadIdx.x].v[e]);
            } else {
#pragma unroll
                for (int m = 0; m < KM; ++m) load_f<T, VEC>(x + (start + p0 - 1 - m) * x_stride + c0, win[m]);
            }
        }

        const T* xp = x + (start + p0) * x_stride + c0;
        T* yp = y + (start + p0) * (long long)C + c0;
        // U positions per step: their loads are issued together (kept packed until used, to save registers),
        // then the U outputs computed in order
        for (int p = p0; p < p1; p += U) {
            Vec<T, VEC> raw[U];
#pragma unroll
            for (int u = 0; u < U; ++u)
                if (p + u < p1)
                    raw[u] = ASYNC ? tile[p - p0 + u + KM][threadIdx.x]
                                   : *reinterpret_cast<const Vec<T, VEC>*>(xp + (long long)(p - p0 + u) * x_stride);
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if (p + u < p1) {
                    float cur[VEC], out[VEC];
#pragma unroll
                    for (int e = 0; e < VEC; ++e) cur[e] = to_f(raw[u].v[e]);
#pragma unroll
                    for (int e = 0; e < VEC; ++e) {
                        float a = wt[CONV_K - 1][e] * cur[e];
#pragma unroll
                        for (int m = 0; m < KM; ++m) a += wt[CONV_K - 2 - m][e] * win[m][e];
                        out[e] = silu_f(a);
                    }
                    store_f<T, VEC>(yp + (long long)(p - p0 + u) * C, out);
#pragma unroll
                    for (int e = 0; e < VEC; ++e) {
#pragma unroll
                        for (int m = KM - 1; m > 0; --m) win[m][e] = win[m - 1][e];
                        win[0][e] = cur[e];
                    }
                }
            }
        }

        if (z == 0 && state_out != nullptr) {
            // the last K-1 entries of xs, newest in fin[0]: from x, or from the old state for short sequences
            float fin[KM][VEC];
            if (L <= CH) {  // this chunk covered the whole sequence: win holds them already
#pragma unroll
                for (int m = 0; m < KM; ++m)
#pragma unroll
                    for (int e = 0; e < VEC; ++e) fin[m][e] = win[m][e];
            } else {
#pragma unroll
                for (int m = 0; m < KM; ++m) load_f<T, VEC>(x + (start + L - 1 - m) * x_stride + c0, fin[m]);
            }
            float raw[VEC * KM];
#pragma unroll
            for (int e = 0; e < VEC; ++e)
#pragma unroll
                for (int m = 0; m < KM; ++m) raw[e * KM + m] = fin[KM - 1 - m][e];
#pragma unroll
            for (int m = 0; m < KM; ++m) {
                float part[VEC];
#pragma unroll
                for (int e = 0; e < VEC; ++e) part[e] = raw[m * VEC + e];
                store_f<T, VEC>(state_out + ((long long)s * C + c0) * KM + m * VEC, part);
            }
        }
    }
}

// The one-token decode step (the host's max_seqlen hint is <= 1: every sequence has 0 or 1 tokens). Thread:
// VEC channels of ROWS sequences s0 .. s0 + ROWS - 1 (s0 = blockIdx.y * ROWS; rows past n_seq exit), so the
// weights (8 bytes a channel, as many bytes as the state's read at one row) are loaded once for ROWS rows and the
// ROWS rows' loads are in flight together. A programmatic dependent launch: the weights (no kernel writes them) are
// loaded before waiting for the kernel before; then cu_seqlens, the states and x are loaded together, x at row s on
// the guess that cu_seqlens[s] == s (every sequence one token: the decode batch), so one memory round trip; a
// sequence elsewhere reloads its row. y = silu(w3 x + w2 s2 + w1 s1 + w0 s0); new state (s1, s2, x), or the old
// state copied for an empty sequence. The same thread reads a state before writing it (state_out may alias).
// COAL (3 * VEC * sizeof(T) a multiple of 16): a warp whose 32 threads all have channels moves its state rows
// (32 x 3 VEC contiguous elements) as 16-byte vectors lane by lane (each load or store instruction one contiguous
// 512-byte span; chunk i * 32 + lane is loaded and stored by the same lane), transposed through one row of shared
// memory a warp, instead of each thread's 3 vectors at a stride of 3 VEC elements.
template <typename T, int VEC, bool COAL, int ROWS = 1>
__global__ void __launch_bounds__(128) causal_conv1d_decode(
    const T* __restrict__ x, long long x_stride, const T* __restrict__ w, const void* __restrict__ cu, int cu64,
    const T* state, T* state_out, T* __restrict__ y, int C, int T_rows, int n_seq) {
    constexpr int KM = CONV_K - 1;
    constexpr int NCH = KM * VEC * (int)sizeof(T) / 16;  // 16-byte chunks of a thread's state row (COAL)
    static_assert(!COAL || KM * VEC * sizeof(T) % 16 == 0, "COAL: a thread's state is whole 16-byte chunks");
    __shared__ __align__(16) unsigned char stage[COAL ? 4 * 32 * NCH * 16 : 16];  // [warp][32 * NCH chunks]
    const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    const int lane = threadIdx.x & 31;
    const int wc0 = c0 - lane * VEC;                      // the warp's first channel
    const bool coal = COAL && wc0 + 32 * VEC <= C;         // warp-uniform
    if (c0 >= C) return;
    const int s0 = blockIdx.y * ROWS;
    const int nr = min(ROWS, n_seq - s0);                  // rows of this thread (CTA-uniform)
    allow_dependent_launch();
    float wt[CONV_K][VEC];  // wt[j][e] = w[c0 + e, j]
    load_channels<T, VEC, CONV_K>(w + (long long)c0 * CONV_K, wt);
    wait_for_primary_grid();
    // 1. every load of the ROWS rows first (one round trip): cu_seqlens, the state chunks, x at row s
    long long cu_s[ROWS + 1];
#pragma unroll
    for (int r = 0; r <= ROWS; ++r) cu_s[r] = r <= nr ? load_index(cu, cu64, s0 + r) : 0;
    uint4 sraw[ROWS][COAL ? NCH : 1];  // COAL: the warp's state chunks r * 32 + lane, as loaded
    float old[ROWS][KM][VEC];
    Vec<T, VEC> xr[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int s = s0 + r;
        if (r >= nr) break;
        if (state != nullptr && coal) {
            const uint4* src = reinterpret_cast<const uint4*>(state + ((long long)s * C + wc0) * KM);
#pragma unroll
            for (int i = 0; i < NCH; ++i) sraw[r][i] = src[i * 32 + lane];
        } else if (state != nullptr) {
            load_channels<T, VEC, KM>(state + ((long long)s * C + c0) * KM, old[r]);
        } else {
#pragma unroll
            for (int m = 0; m < KM; ++m)
#pragma unroll
                for (int e = 0; e < VEC; ++e) old[r][m][e] = 0.f;
        }
        if (s < T_rows) xr[r] = *reinterpret_cast<const Vec<T, VEC>*>(x + (long long)s * x_stride + c0);
    }
    uint4* wst = reinterpret_cast<uint4*>(stage) + (threadIdx.x >> 5) * 32 * NCH;
    // 2. row by row: the state transposed (COAL), the output, the new state
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int s = s0 + r;
        if (r >= nr) break;  // CTA-uniform
        if (state != nullptr && coal) {
#pragma unroll
            for (int i = 0; i < NCH; ++i) wst[i * 32 + lane] = sraw[r][i];
            __syncwarp();
            load_channels<T, VEC, KM>(reinterpret_cast<const T*>(wst + lane * NCH), old[r]);
            __syncwarp();
        }
        const long long start = cu_s[r], end = cu_s[r + 1];
        const bool one = end > start;
        float cur[VEC];
        if (one && start != s) {
            load_f<T, VEC>(x + start * x_stride + c0, cur);
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e) cur[e] = s < T_rows ? to_f(xr[r].v[e]) : 0.f;
        }
        float fin[KM][VEC];  // the new state, oldest first
        if (one) {
            float out[VEC];
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                float a = wt[CONV_K - 1][e] * cur[e];
#pragma unroll
                for (int m = 0; m < KM; ++m) a += wt[m][e] * old[r][m][e];
                out[e] = silu_f(a);
            }
            store_f<T, VEC>(y + start * (long long)C + c0, out);
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
#pragma unroll
                for (int m = 0; m < KM - 1; ++m) fin[m][e] = old[r][m + 1][e];
                fin[KM - 1][e] = cur[e];
            }
        } else {
#pragma unroll
            for (int m = 0; m < KM; ++m)
#pragma unroll
                for (int e = 0; e < VEC; ++e) fin[m][e] = old[r][m][e];
        }
        if (state_out != nullptr) {
            float raw[VEC * KM];  // channel-major: raw[e * KM + m]
#pragma unroll
            for (int e = 0; e < VEC; ++e)
#pragma unroll
                for (int m = 0; m < KM; ++m) raw[e * KM + m] = fin[m][e];
            T* dst = coal ? reinterpret_cast<T*>(wst + lane * NCH) : state_out + ((long long)s * C + c0) * KM;
#pragma unroll
            for (int m = 0; m < KM; ++m) {
                float part[VEC];
#pragma unroll
                for (int e = 0; e < VEC; ++e) part[e] = raw[m * VEC + e];
                store_f<T, VEC>(dst + m * VEC, part);
            }
            if (coal) {
                __syncwarp();
                uint4* o = reinterpret_cast<uint4*>(state_out + ((long long)s * C + wc0) * KM);
#pragma unroll
                for (int i = 0; i < NCH; ++i) o[i * 32 + lane] = wst[i * 32 + lane];
                __syncwarp();  // the chunks are read before the next row refills the staging row
            }
        }
    }
}

}  // namespace conv1d
