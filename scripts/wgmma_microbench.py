"""wgmma throughput on this card for the shapes and shared-memory layouts the attention kernels use.

    PYTHONPATH=. python scripts/wgmma_microbench.py

Each CTA has 3 warpgroups (one CTA per SM, 132 CTAs on an H100) that issue GROUP wgmmas per commit group into one
accumulator and wait, ITERS times, on operands that stay in shared memory (the data is never checked: this only
times the tensor cores). Layouts: "none" = the no-swizzle core-matrix layout of kernels/cuda/attention.cu
(8 rows x 16 B core matrices, LBO / SBO in the descriptor), "sw128" = the 128-byte swizzle (8 rows x 128 B atoms).
Reports TFLOP/s against the bf16 cuBLAS ceiling measured in the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SRC = r"""
#include <cuda_bf16.h>
typedef unsigned int u32;
typedef unsigned long long u64;
__device__ __forceinline__ u32 smem_u32(const void* p) { return static_cast<u32>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ u64 desc(u32 a, u32 lbo, u32 sbo, int sw) {
    return (u64)((a & 0x3FFFF) >> 4) | ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32) | ((u64)sw << 62);
}
#define ACC8(i) "+f"(d[i]), "+f"(d[i+1]), "+f"(d[i+2]), "+f"(d[i+3]), "+f"(d[i+4]), "+f"(d[i+5]), "+f"(d[i+6]), "+f"(d[i+7])

// m64n128k16 SS (K-major A and B)
__device__ __forceinline__ void ss128(float (&d)[64], u64 a, u64 b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
      "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63},"
      " %64, %65, 1, 1, 1, 0, 0;\n"
      : ACC8(0), ACC8(8), ACC8(16), ACC8(24), ACC8(32), ACC8(40), ACC8(48), ACC8(56) : "l"(a), "l"(b));
}
// m64nNk16 RS (A from registers, B N-major / trans-b)
template <int N> __device__ __forceinline__ void rs(float (&d)[N / 2], const u32 (&a)[4], u64 b);
template <> __device__ __forceinline__ void rs<64>(float (&d)[32], const u32 (&a)[4], u64 b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31},"
      " {%32,%33,%34,%35}, %36, 1, 1, 1, 1;\n"
      : ACC8(0), ACC8(8), ACC8(16), ACC8(24) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
template <> __device__ __forceinline__ void rs<72>(float (&d)[36], const u32 (&a)[4], u64 b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n72k16.f32.bf16.bf16 {"
      "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35},"
      " {%36,%37,%38,%39}, %40, 1, 1, 1, 1;\n"
      : ACC8(0), ACC8(8), ACC8(16), ACC8(24), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
template <> __device__ __forceinline__ void rs<80>(float (&d)[40], const u32 (&a)[4], u64 b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n80k16.f32.bf16.bf16 {"
      "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39},"
      " {%40,%41,%42,%43}, %44, 1, 1, 1, 1;\n"
      : ACC8(0), ACC8(8), ACC8(16), ACC8(24), ACC8(32) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

// QK^T-like: m64n128k16 SS, GROUP per commit. SW: 0 none, 1 sw128. KSTEPS distinct k offsets cycled.
template <int SW, int GROUP>
__global__ void __launch_bounds__(384, 1) bench_ss(float* out, int iters) {
    extern __shared__ __align__(1024) unsigned char sm[];
    const int wg = threadIdx.x / 128;
    float d[64];
    for (int i = 0; i < 64; ++i) d[i] = 0.f;
    const u32 a0 = smem_u32(sm) + wg * 8192, b0 = smem_u32(sm) + 32768;
    u64 da, db;
    if (SW == 0) { da = desc(a0, 128, 1024, 0); db = desc(b0, 128, 1024, 0); }   // 8 chunks per row (64 cols)
    else { da = desc(a0, 16, 1024, 1); db = desc(b0, 16, 1024, 1); }             // 128-B rows, 8-row atoms
    for (int it = 0; it < iters; ++it) {
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            const int ks = g & 3;
            const u32 off = SW == 0 ? ks * 256 : ks * 32;
            ss128(d, da + (off >> 4), db + (off >> 4));
        }
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    }
    float s = 0.f;
    for (int i = 0; i < 64; ++i) s += d[i];
    if (s == 1.2345f) out[threadIdx.x] = s;
}

// PV-like: m64nNk16 RS, B = V N-major in the no-swizzle core-matrix layout with CHK chunks per row.
template <int N, int CHK, int GROUP>
__global__ void __launch_bounds__(384, 1) bench_rs(float* out, int iters) {
    extern __shared__ __align__(1024) unsigned char sm[];
    float d[N / 2];
    for (int i = 0; i < N / 2; ++i) d[i] = 0.f;
    u32 a[4] = {threadIdx.x, threadIdx.x * 3u, 7u, 9u};
    const u32 b0 = smem_u32(sm);
    const u64 db = desc(b0, CHK * 128, 128, 0);
    for (int it = 0; it < iters; ++it) {
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int g = 0; g < GROUP; ++g) rs<N>(d, a, db + (((g & 7) * 2 * CHK * 128) >> 4));
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    }
    float s = 0.f;
    for (int i = 0; i < N / 2; ++i) s += d[i];
    if (s == 1.2345f) out[threadIdx.x] = s;
}
"""


def main():
    from kernels.runtime.nvrtc import compile_source, launch, i32, set_max_dynamic_shared_memory
    from benchmarks.common import bf16_gemm_TFLOPs
    from cuda.core import Device

    Device(torch.cuda.current_device()).set_current()
    names = {
        "ss n128 none G4": ("bench_ss<0, 4>", 64 * 128 * 16 * 2),
        "ss n128 none G16": ("bench_ss<0, 16>", 64 * 128 * 16 * 2),
        "ss n128 sw128 G4": ("bench_ss<1, 4>", 64 * 128 * 16 * 2),
        "ss n128 sw128 G16": ("bench_ss<1, 16>", 64 * 128 * 16 * 2),
        "rs n64 none(chk8) G8": ("bench_rs<64, 8, 8>", 64 * 64 * 16 * 2),
        "rs n72 none(chk10) G8": ("bench_rs<72, 10, 8>", 64 * 72 * 16 * 2),
        "rs n80 none(chk10) G8": ("bench_rs<80, 10, 8>", 64 * 80 * 16 * 2),
        "rs n72 none(chk9) G8": ("bench_rs<72, 9, 8>", 64 * 72 * 16 * 2),
    }
    mod = compile_source(SRC, tuple(n for n, _ in names.values()), "sm_90a")
    out = torch.zeros(384, device="cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"cuBLAS bf16 ceiling: {bf16_gemm_TFLOPs():.0f} TFLOP/s", flush=True)
    for label, (name, flop) in names.items():
        k = mod.get_kernel(name)
        set_max_dynamic_shared_memory(k, 65536)
        group = int(label.split("G")[-1])
        iters = 20000 // group * 4
        for rep in range(2):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            launch(k, (sms, 1, 1), (384, 1, 1), 65536, out.data_ptr(), i32(iters))
            b.record()
            b.synchronize()
        ms = a.elapsed_time(b)
        tf = sms * 3 * iters * group * flop / (ms * 1e-3) / 1e12
        print(f"{label:26s} {ms:8.3f} ms  {tf:6.0f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
