// sm_90 tensor-memory-accelerator copies (cp.async.bulk.tensor) between global and shared memory, described by a
// CUtensorMap that the host encodes (kernels/runtime/tma.py: tensor_map) and passes by value as a
// `const __grid_constant__ TmaDesc` kernel parameter. Coordinates are element indices, innermost dimension first
// (c0 = column); boxes reaching out of the tensor read zeros and write nothing there.
#pragma once

namespace qkern {

// A CUtensorMap (the copy engine's 128-byte tensor descriptor).
struct __align__(64) TmaDesc { unsigned long long w[16]; };

__device__ __forceinline__ void tma_prefetch_desc(const TmaDesc& tm) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<unsigned long long>(&tm)) : "memory");
}

// tma_load_Nd(dst, tm, c0, .., bar): copy the box at (c0, ..) into shared memory at dst, completing `bar`'s
// transaction count by the box's bytes.
// tma_store_Nd(tm, c0, .., src): copy a box from shared memory at src to (c0, ..) in global memory (a bulk group:
// finish with tma_store_commit_and_wait_read before reusing src). One macro line per rank N = 1 .. 5.
#define QKERN_UNPAREN(...) __VA_ARGS__
#define QKERN_TMA_COPIES(N, PARAMS, ARGS, LOAD_OPS, STORE_OPS)                                                     \
    __device__ __forceinline__ void tma_load_##N##d(unsigned dst, const TmaDesc& tm, QKERN_UNPAREN PARAMS,        \
                                                    unsigned bar) {                                               \
        asm volatile("cp.async.bulk.tensor." #N "d.shared::cluster.global.mbarrier::complete_tx::bytes " LOAD_OPS \
                     ";\n" ::"r"(dst), "l"(reinterpret_cast<unsigned long long>(&tm)), QKERN_UNPAREN ARGS, "r"(bar) \
                     : "memory");                                                                                 \
    }                                                                                                             \
    __device__ __forceinline__ void tma_store_##N##d(const TmaDesc& tm, QKERN_UNPAREN PARAMS, unsigned src) {    \
        asm volatile("cp.async.bulk.tensor." #N "d.global.shared::cta.bulk_group " STORE_OPS ";\n"              \
                     ::"l"(reinterpret_cast<unsigned long long>(&tm)), QKERN_UNPAREN ARGS, "r"(src) : "memory");  \
    }
QKERN_TMA_COPIES(1, (int c0), ("r"(c0)), "[%0], [%1, {%2}], [%3]", "[%0, {%1}], [%2]")
QKERN_TMA_COPIES(2, (int c0, int c1), ("r"(c0), "r"(c1)), "[%0], [%1, {%2, %3}], [%4]", "[%0, {%1, %2}], [%3]")
QKERN_TMA_COPIES(3, (int c0, int c1, int c2), ("r"(c0), "r"(c1), "r"(c2)), "[%0], [%1, {%2, %3, %4}], [%5]",
                 "[%0, {%1, %2, %3}], [%4]")
QKERN_TMA_COPIES(4, (int c0, int c1, int c2, int c3), ("r"(c0), "r"(c1), "r"(c2), "r"(c3)),
                 "[%0], [%1, {%2, %3, %4, %5}], [%6]", "[%0, {%1, %2, %3, %4}], [%5]")
QKERN_TMA_COPIES(5, (int c0, int c1, int c2, int c3, int c4), ("r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4)),
                 "[%0], [%1, {%2, %3, %4, %5, %6}], [%7]", "[%0, {%1, %2, %3, %4, %5}], [%6]")
#undef QKERN_TMA_COPIES
#undef QKERN_UNPAREN

__device__ __forceinline__ void tma_store_commit_and_wait_read() {
    asm volatile("cp.async.bulk.commit_group;\ncp.async.bulk.wait_group.read 0;\n" ::: "memory");
}

// Order this thread's generic-proxy shared-memory writes before later async-proxy (copy engine, wgmma) reads.
__device__ __forceinline__ void fence_proxy_async_shared() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

}  // namespace qkern
