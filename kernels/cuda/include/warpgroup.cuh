// sm_90 warp specialisation: hand registers between warpgroups (setmaxnreg). Every warp of a warpgroup must
// execute the same call; the registers the producers release must cover what the consumers ask for, or
// setmaxnreg.inc waits forever.
#pragma once

namespace qkern {

template <int N> __device__ __forceinline__ void regs_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N> __device__ __forceinline__ void regs_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }

}  // namespace qkern
