// sm_90a warpgroup tensor-core products (wgmma.mma_async): fences, commit groups, waits, shared-memory operand
// descriptors, and the m64nNk16 wrappers Wgmma<N> (generated, wgmma_ops.cuh).
//
// An asynchronous wgmma reads and writes its accumulator registers in the background: fence them with reg_fence
// (ptx.cuh) before wgmma_fence and after the wait, so the compiler neither reorders nor reuses them meanwhile.
#pragma once
#include "ptx.cuh"
#include "wgmma_ops.cuh"

namespace qkern {

// Order this warpgroup's register and shared-memory accesses before the wgmmas that follow.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
// Close the wgmmas issued since the last commit into one group.
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Wait until at most N committed groups are still running.
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Descriptor of a wgmma shared-memory operand in the 128-byte swizzle layout (8-row atoms of 1024 bytes, the
// layout CU_TENSOR_MAP_SWIZZLE_128B writes): start address, leading-dimension byte offset `lbo`, stride 1024 bytes
// between 8-row groups. Adding k to the descriptor advances the start by 16 k bytes.
__device__ __forceinline__ unsigned long long make_desc_sw128(unsigned saddr, unsigned lbo) {
    return (unsigned long long)((saddr & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

}  // namespace qkern
