// Warp and block reductions (butterfly shuffles: every participating thread gets the result).
#pragma once

namespace qkern {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the 4 threads of a quad (lanes 4i .. 4i+3): the threads sharing a row of an mma accumulator.
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}

// Sums over the blockDim.x threads that share a row (blockDim.x a multiple of 32, blockDim.y row groups per CTA,
// at most 32 warps per CTA), R independent sums at once (a thread serving R rows). `sh` holds 32 * R floats and
// must not be reused by the next call without a barrier (kernels pass a fresh buffer per reduction). Every
// thread of the row group gets the totals.
template <int R>
__device__ __forceinline__ void row_sums(float (&v)[R], float* sh) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int r = 0; r < R; ++r) v[r] += __shfl_xor_sync(0xffffffffu, v[r], o);
    if (blockDim.x == 32) return;  // one warp per row group: no shared memory
    const int nw = blockDim.x >> 5, lane = threadIdx.x & 31;
    float* part = sh + threadIdx.y * nw * R;
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) part[r * nw + (threadIdx.x >> 5)] = v[r];
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < R; ++r) v[r] = lane < nw ? part[r * nw + lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int r = 0; r < R; ++r) v[r] += __shfl_xor_sync(0xffffffffu, v[r], o);
}

__device__ __forceinline__ float row_sum(float v, float* sh) {
    float a[1] = {v};
    row_sums<1>(a, sh);
    return a[0];
}

}  // namespace qkern
