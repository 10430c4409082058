// Small PTX helpers: shared-memory addresses, named barriers, the fast exp2, programmatic dependent launch, the
// 16-byte global loads of the weight-streaming kernels.
#pragma once

namespace qkern {

// 32-bit shared-state-space address of a generic pointer into shared memory (what the PTX shared:: forms take).
__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Barrier `id` over n threads of the CTA, callable from different places in the code by whole warps.
__device__ __forceinline__ void bar_sync(int id, int n) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory"); }

// 2^x on the MUFU unit (flush-to-zero; about 2 ulp): the softmax exponential with log2(e) folded into the scale.
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Keep the compiler from moving accesses of r across this point (used around asynchronous tensor-core ops, whose
// register operands the compiler does not see being read or written in the background).
__device__ __forceinline__ void reg_fence(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// Programmatic dependent launch (PDL, sm_90). A kernel launched with pdl=True (kernels/runtime/launch.py) may be
// scheduled while the kernel before it in the stream still runs. allow_dependent_launch (griddepcontrol
// .launch_dependents) lets the next kernel be scheduled once every CTA of this grid has called it or exited;
// wait_for_primary_grid (griddepcontrol.wait) blocks the calling thread until the previous grid has finished and
// its writes are visible. Without a programmatic launch (or before sm_90) the stream orders the kernels and both
// return at once, so a kernel written this way is correct launched either way.
//
// The protocol, for any kernel launched with pdl=True (the host side, its switch and fallback: launch() in
// kernels/runtime/launch.py):
//   * every thread calls wait_for_primary_grid() before its first read of anything an earlier kernel of the
//     stream wrote (activations, caches, lengths, counters, a reused allocation) and before its first global
//     write or atomic (an earlier kernel may still be reading that memory). A thread that returns without touching
//     global memory may skip it, as long as some thread of the grid waits: then the grid cannot finish before its
//     predecessor, so one wait covers the whole stream history, not only the previous kernel.
//   * reads of data no kernel of the stream writes (weights, constant tables) may be issued before the wait: that
//     is the gain (gemm.cu streams its weights before it; norms.cu loads the norm weights).
//   * allow_dependent_launch() may come anywhere, the earlier the better (the next kernel's launch latency and its
//     own constant loads then overlap this kernel): its dependents wait for this whole grid anyway. Trigger late
//     only to keep the dependents' CTAs off the SMs while a grid of more than one wave is still being scheduled.
// pdl_begin() is the common prologue: trigger, then wait (kernels with no constant data worth loading first).
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// wait_for_primary_grid(p, ...) also passes each pointer named through an opaque asm after the wait, so loads
// through it cannot start before the wait. Why: the wait's memory clobber orders ordinary loads, but a load through
// a `const T* __restrict__` parameter is an invariant load to the compiler (ld.global.nc), which it may schedule
// above the wait, reading what the kernel before is still writing. Name every such pointer a kernel reads after
// the wait; kernels/runtime/pdl_audit.py checks the machine code of every kernel for accesses above the wait.
template <typename P>
__device__ __forceinline__ void opaque_after_wait(P& p) {
    asm volatile("" : "+l"(p)::"memory");
}
template <typename... P>
__device__ __forceinline__ void wait_for_primary_grid(P&... after) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    (opaque_after_wait(after), ...);
#endif
}
// Wait for the primary grid, then let this grid's dependents launch (a kernel whose early work is all before here).
__device__ __forceinline__ void wait_and_release() {
    wait_for_primary_grid();
    allow_dependent_launch();
}
__device__ __forceinline__ void pdl_begin() {
    allow_dependent_launch();
    wait_for_primary_grid();
}

// Thread-block clusters (sm_90): the barrier over every thread of the cluster (arrive with release, wait with
// acquire: shared-memory writes before the arrive are visible to the cluster's reads after the wait), this CTA's
// rank, and reads of another CTA's shared memory (distributed shared memory: the address of the same variable in
// CTA `rank`, then a 4-byte load from it). A CTA's shared memory may be read only while it runs: its owner must
// not exit before the readers are done (a second cluster barrier).
// A kernel attribute: clusters of n CTAs along y (sm_90; nothing before it, where the host must not launch n > 1).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define QKERN_CLUSTER_Y(n) __cluster_dims__(1, n, 1)
#else
#define QKERN_CLUSTER_Y(n)
#endif
__device__ __forceinline__ void cluster_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ unsigned cluster_ctarank() {
    unsigned r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
#endif
    return r;
}
__device__ __forceinline__ float ld_cluster_f32(const float* p, unsigned rank) {
    float v = *p;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    unsigned a;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(a) : "r"(smem_u32(p)), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(a) : "memory");
#endif
    return v;
}

// L2 prefetch of the 128-byte line holding p (no data returned)
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p)); }

// An L2 cache policy for loads that pass a hint: evict_first (data read once, which then leaves L2 before lines
// that will be read again, e.g. prefetched ones) or evict_normal (the default policy, as a plain load).
__device__ __forceinline__ unsigned long long l2_policy(bool evict_first) {
    unsigned long long pol;
    if (evict_first)
        asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
    else
        asm("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(pol));
    return pol;
}

// 16 bytes read once (weights): no L1 allocation. Not volatile: the compiler may hoist these loads above earlier
// arithmetic, which is what keeps several steps of loads in flight.
__device__ __forceinline__ uint4 load_stream(const void* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

// load_stream with an L2 policy from l2_policy.
__device__ __forceinline__ uint4 load_stream(const void* p, unsigned long long pol) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0,%1,%2,%3}, [%4], %5;\n"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p), "l"(pol));
    return r;
}

// 16 bytes written by the previous kernel: from L2 (coherent), never from a stale L1 line.
__device__ __forceinline__ uint4 load_l2(const void* p) {
    uint4 r;
    asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p) : "memory");
    return r;
}

}  // namespace qkern
