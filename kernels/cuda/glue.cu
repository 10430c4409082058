// The decode step's glue, one kernel each instead of a chain of small torch ops (each a launch of ~2 us at decode):
//
// decode_prologue: per row b (one CTA): x[b] = embed[tokens[b]] (16-byte copies), the mRoPE angles of position
//   p = clamp(lengths[b] + rope_delta[b], 0, capacity - 1): cos_out[b] = cos[p], sin_out[b] = sin[p], and
//   attend[b] = lengths[b] + 1 (the slots the new token attends to). Tokens outside [0, V) read row 0 (they cannot
//   come from the model's own sampling; an eager caller's ids are checked by the wrapper).
//
// greedy_select: tokens[b] = argmax_v logits[b, v] (the first index of the maximum; NaN counts as the maximum, as
//   torch.argmax), then the stop rule of model.generate.stop_update: a row already done emits pad; a row that emits
//   one of eos[0 .. n_eos) is done from then on. grid = (chunks, B): each CTA reduces one chunk of the row to a
//   (value, index) partial; the row's last CTA to finish (a per-row ticket, reset by that CTA for the next call)
//   reduces the partials and applies the stop rule.
//
// split_columns: the column parts of a fused projection's output y [T, N] (row stride sy) copied to contiguous
//   tensors in one launch (instead of one copy kernel a part: cuBLAS writes y whole, and the kernels after it
//   take contiguous rows): part j = columns [c_j, c_j + n_j) -> out_j [T, n_j]. VEC elements a thread (every c_j,
//   n_j and sy a multiple of VEC); grid (vectors of a row / 128, T).
#include "include/convert.cuh"
#include "include/ptx.cuh"

namespace glue {
using namespace qkern;

template <typename T>
__global__ void __launch_bounds__(128) decode_prologue(const long long* __restrict__ tokens, const T* __restrict__ embed,
                                                       const int* __restrict__ lengths,
                                                       const long long* __restrict__ rope_delta,
                                                       const float* __restrict__ cos, const float* __restrict__ sin,
                                                       T* __restrict__ x, float* __restrict__ cos_out,
                                                       float* __restrict__ sin_out, int* __restrict__ attend, int V,
                                                       int H, int R, int capacity) {
    pdl_begin();  // a programmatic launch (include/ptx.cuh): tokens and lengths come from the previous step
    const int b = blockIdx.x;
    long long tok = tokens[b];
    if (tok < 0 || tok >= V) tok = 0;
    const int len = lengths[b];
    long long p = (long long)len + rope_delta[b];
    p = p < 0 ? 0 : (p >= capacity ? capacity - 1 : p);
    constexpr int VEC = 16 / sizeof(T);
    const uint4* src = reinterpret_cast<const uint4*>(embed + (size_t)tok * H);
    uint4* dst = reinterpret_cast<uint4*>(x + (size_t)b * H);
    for (int i = threadIdx.x; i < H / VEC; i += blockDim.x) dst[i] = src[i];
    for (int i = threadIdx.x; i < R; i += blockDim.x) {
        cos_out[(size_t)b * R + i] = cos[(size_t)p * R + i];
        sin_out[(size_t)b * R + i] = sin[(size_t)p * R + i];
    }
    if (threadIdx.x == 0) attend[b] = len + 1;
}

// (v, i) beats (bv, bi): NaN above every number, then the larger value, then the smaller index
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
    const bool vn = v != v, bn = bv != bv;
    if (vn || bn) return vn && (!bn || i < bi);
    return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ void warp_best(float& v, int& i) {
#pragma unroll
    for (int o = 16; o; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (better(ov, oi, v, i)) v = ov, i = oi;
    }
}

// CTA-wide best of (v, i); the result is valid in thread 0
__device__ __forceinline__ void block_best(float& v, int& i) {
    __shared__ float sv[32];
    __shared__ int si[32];
    warp_best(v, i);
    const int w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if ((threadIdx.x & 31) == 0) sv[w] = v, si[w] = i;
    __syncthreads();
    if (w == 0) {
        v = threadIdx.x < nw ? sv[threadIdx.x] : __int_as_float(0xff800000);
        i = threadIdx.x < nw ? si[threadIdx.x] : 0x7fffffff;
        warp_best(v, i);
    }
}

constexpr int SELECT_THREADS = 256;

template <typename T>
__global__ void __launch_bounds__(SELECT_THREADS) greedy_select(const T* __restrict__ logits, long long sl, int V,
                                                                int chunk, float* __restrict__ part_v,
                                                                int* __restrict__ part_i, int* __restrict__ ticket,
                                                                bool* __restrict__ done,
                                                                const long long* __restrict__ eos, int n_eos,
                                                                const long long* __restrict__ pad,
                                                                long long* __restrict__ tokens) {
    pdl_begin();  // a programmatic launch (include/ptx.cuh): the logits come from the lm_head GEMM
    const int b = blockIdx.y, c = blockIdx.x, chunks = gridDim.x;
    const T* row = logits + (size_t)b * sl;
    const int lo = c * chunk, hi = min(V, lo + chunk);
    float bv = __int_as_float(0xff800000);
    int bi = 0x7fffffff;
#pragma unroll 8  // 8 loads in flight a thread (the compares wait on them, not the next loads)
    for (int v = lo + threadIdx.x; v < hi; v += SELECT_THREADS) {
        const float x = to_f(row[v]);
        if (better(x, v, bv, bi)) bv = x, bi = v;
    }
    block_best(bv, bi);
    __shared__ bool last;
    if (threadIdx.x == 0) {
        part_v[(size_t)b * chunks + c] = bv;
        part_i[(size_t)b * chunks + c] = bi;
        __threadfence();
        last = atomicAdd(ticket + b, 1) == chunks - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    bv = __int_as_float(0xff800000);
    bi = 0x7fffffff;
    for (int k = threadIdx.x; k < chunks; k += SELECT_THREADS) {
        const float v = __ldcg(part_v + (size_t)b * chunks + k);
        const int i = __ldcg(part_i + (size_t)b * chunks + k);
        if (better(v, i, bv, bi)) bv = v, bi = i;
    }
    block_best(bv, bi);
    if (threadIdx.x == 0) {
        ticket[b] = 0;  // ready for the next call
        long long tok = done[b] ? pad[0] : (long long)bi;
        bool stop = done[b];
        for (int e = 0; e < n_eos; ++e) stop |= tok == eos[e];
        done[b] = stop;
        tokens[b] = tok;
    }
}

struct Parts {
    void* out[4];
    int start[4];  // c_j: the part's first column in y
    int width[4];  // n_j (0 for unused parts)
};

template <typename T, int VEC>
__global__ void __launch_bounds__(128) split_columns(const T* __restrict__ y, long long sy, const Parts p,
                                                      int row_vecs) {
    pdl_begin();  // a programmatic launch (include/ptx.cuh): y comes from the GEMM before
    const int t = blockIdx.y, v = blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= row_vecs) return;
    int c = v * VEC, j = 0;  // the v-th vector of the concatenated parts: part j, column c of it
#pragma unroll
    for (int i = 0; i < 3; ++i)
        if (j == i && c >= p.width[i]) c -= p.width[i], j = i + 1;
    using V = Vec<T, VEC>;
    const V val = *reinterpret_cast<const V*>(y + (size_t)t * sy + p.start[j] + c);
    *reinterpret_cast<V*>(reinterpret_cast<T*>(p.out[j]) + (size_t)t * p.width[j] + c) = val;
}

}  // namespace glue
