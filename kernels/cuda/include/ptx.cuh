// Small PTX helpers: shared-memory addresses, named barriers, the fast exp2, programmatic dependent launch.
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

// Programmatic dependent launch (sm_90): a kernel launched with pdl=True (kernels/runtime/launch.py) may be scheduled
// while the previous kernel of the stream still runs. allow_dependent_launch lets the next kernel be scheduled now;
// wait_for_primary_grid waits until the previous grid has finished and its writes are visible. Without a
// programmatic launch (or before sm_90) the stream orders the kernels and both return at once.
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_primary_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

}  // namespace qkern
