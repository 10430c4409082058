// Shared device helpers for the NVRTC kernels: dtype conversion, aligned vector load/store, reductions.
// Every kernel computes in fp32 and rounds once on store (from_f), like the reference.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// fp32 -> T -> fp32: the value a T tensor would hold (used where the reference rounds an intermediate).
template <typename T> __device__ __forceinline__ float round_to(float v) { return to_f<T>(from_f<T>(v)); }

__device__ __forceinline__ float f32_nan() { return __int_as_float(0x7fc00000); }

// N consecutive elements moved as one aligned access: 16 bytes at most per instruction; a 32-byte Vec
// (8 floats) is split by the compiler into two 16-byte accesses. The caller guarantees the alignment.
template <typename T, int N>
struct alignas(sizeof(T) * N < 16 ? sizeof(T) * N : 16) Vec {
    T v[N];
};

template <typename T, int N>
__device__ __forceinline__ void load_f(const T* __restrict__ p, float (&out)[N]) {
    const Vec<T, N> t = *reinterpret_cast<const Vec<T, N>*>(p);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_f(t.v[i]);
}

template <typename T, int N>
__device__ __forceinline__ void store_f(T* __restrict__ p, const float (&in)[N]) {
    Vec<T, N> t;
#pragma unroll
    for (int i = 0; i < N; ++i) t.v[i] = from_f<T>(in[i]);
    *reinterpret_cast<Vec<T, N>*>(p) = t;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
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
