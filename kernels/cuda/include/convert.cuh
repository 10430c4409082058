// Element types: fp32 <-> T conversions, aligned vector loads and stores, packing two floats into a 32-bit pair.
// Every kernel computes in fp32 and rounds once on store (from_f), like the reference.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace qkern {

typedef unsigned int u32;

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
__device__ __forceinline__ float f32_neg_inf() { return __int_as_float(0xff800000); }

template <typename T> struct IsBf16 { static constexpr bool value = false; };
template <> struct IsBf16<__nv_bfloat16> { static constexpr bool value = true; };

// Two floats rounded to T (16-bit) and packed into one 32-bit register, lo in the low half: the operand and store
// format of the tensor-core instructions.
template <typename T> __device__ __forceinline__ u32 pack2(float lo, float hi);
template <> __device__ __forceinline__ u32 pack2<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<u32*>(&h);
}
template <> __device__ __forceinline__ u32 pack2<__half>(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<u32*>(&h);
}

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

}  // namespace qkern
