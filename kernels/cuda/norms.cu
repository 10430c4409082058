// LayerNorm, optionally fused with the residual add that precedes it in a pre-norm block.
//   ADD=false: y = LN(x) * w + b
//   ADD=true:  residual_out = round_T(residual + x + bias);  y = LN(residual_out) * w + b
// Any of bias, w, b may be null (no bias / scale 1 / shift 0).
// Statistics in fp32 on the values as stored (so y matches LN of the residual_out tensor), biased variance.
#include "include/convert.cuh"
#include "include/ptx.cuh"
#include "include/reduce.cuh"

namespace norms {
using namespace qkern;

// One row group per blockDim.x threads (a multiple of 32, at most 1024), blockDim.y groups per CTA; a group
// serves R consecutive rows and each thread keeps one vector of VEC elements of each in registers. So x (and
// residual) are read once, with R loads in flight per thread, and mean and variance are two passes over
// registers (no E[x^2] - E[x]^2 cancellation). cols % VEC == 0, cols <= VEC * blockDim.x, pointers aligned.
template <typename T, int VEC, int R, bool ADD>
__global__ void __launch_bounds__(1024) layer_norm_kernel(
    const T* __restrict__ x, const T* __restrict__ bias, const T* __restrict__ residual,
    const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y, T* __restrict__ residual_out,
    int rows, int cols, float eps) {
    __shared__ float red[2][32 * R];
    const int row0 = (blockIdx.x * blockDim.y + threadIdx.y) * R;
    const int c = threadIdx.x * VEC;
    float v[R][VEC], s[R], q[R];
    bool live[R];  // dead threads still join the barriers in row_sums
#pragma unroll
    for (int r = 0; r < R; ++r) {
        live[r] = row0 + r < rows && c < cols;
        if (live[r]) load_f(x + (size_t)(row0 + r) * cols + c, v[r]);
    }
    if (ADD) {
        float bb[VEC];
        if (bias && c < cols) load_f(bias + c, bb);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (!live[r]) continue;
            float res[VEC];
            load_f(residual + (size_t)(row0 + r) * cols + c, res);
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[r][k] = round_to<T>(res[k] + v[r][k] + (bias ? bb[k] : 0.f));
            store_f(residual_out + (size_t)(row0 + r) * cols + c, v[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        s[r] = 0.f;
        if (live[r]) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) s[r] += v[r][k];
        }
    }
    row_sums<R>(s, red[0]);
#pragma unroll
    for (int r = 0; r < R; ++r) {
        s[r] /= cols;  // the mean
        q[r] = 0.f;
        if (live[r]) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) q[r] += (v[r][k] - s[r]) * (v[r][k] - s[r]);
        }
    }
    row_sums<R>(q, red[1]);
    if (c >= cols) return;
    float ww[VEC], bb[VEC];
    if (w) load_f(w + c, ww);
    if (b) load_f(b + c, bb);
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (!live[r]) continue;
        const float rstd = rsqrtf(q[r] / cols + eps);
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[r][k] = (v[r][k] - s[r]) * rstd * (w ? ww[k] : 1.f) + (b ? bb[k] : 0.f);
        store_f(y + (size_t)(row0 + r) * cols + c, v[r]);
    }
}

// One row per warp, blockDim = (32, rows per CTA): no shared memory and no barriers, the statistics are warp
// shuffles. Lane l keeps vectors l, l + 32, ..., l + 32 (NPT - 1) of its row in registers (NPT loads in flight).
// For rows of at most 32 * NPT vectors (the ViT widths: 768, 1024, 1152 in bf16 are 3, 4, 5 vectors a lane).
// cols % VEC == 0, pointers VEC-aligned.
template <typename T, int VEC, int NPT, bool ADD>
__global__ void __launch_bounds__(128) layer_norm_warp_kernel(
    const T* __restrict__ x, const T* __restrict__ bias, const T* __restrict__ residual,
    const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y, T* __restrict__ residual_out,
    int rows, int cols, float eps) {
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= rows) return;  // whole warps leave together: nothing else waits for them
    const size_t off = (size_t)row * cols;
    float v[NPT][VEC];
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
        const int c = (threadIdx.x + 32 * i) * VEC;
        if (c < cols) load_f(x + off + c, v[i]);
    }
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
        const int c = (threadIdx.x + 32 * i) * VEC;
        if (c >= cols) continue;
        if (ADD) {
            float r[VEC], bb[VEC];
            load_f(residual + off + c, r);
            if (bias) load_f(bias + c, bb);
#pragma unroll
            for (int k = 0; k < VEC; ++k) v[i][k] = round_to<T>(r[k] + v[i][k] + (bias ? bb[k] : 0.f));
            store_f(residual_out + off + c, v[i]);
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) s += v[i][k];
    }
    const float mean = warp_sum(s) / cols;
    float q = 0.f;
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
        if ((threadIdx.x + 32 * i) * VEC >= cols) continue;
#pragma unroll
        for (int k = 0; k < VEC; ++k) q += (v[i][k] - mean) * (v[i][k] - mean);
    }
    const float rstd = rsqrtf(warp_sum(q) / cols + eps);
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
        const int c = (threadIdx.x + 32 * i) * VEC;
        if (c >= cols) continue;
        float ww[VEC], bb[VEC];
        if (w) load_f(w + c, ww);
        if (b) load_f(b + c, bb);
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[i][k] = (v[i][k] - mean) * rstd * (w ? ww[k] : 1.f) + (b ? bb[k] : 0.f);
        store_f(y + off + c, v[i]);
    }
}

// Any width: one row per CTA (blockDim.y == 1), scalar accesses, x re-read from cache for each pass.
// Used only when a row does not fit the register kernels (more than 1024 vectors).
template <typename T, bool ADD>
__global__ void __launch_bounds__(1024) layer_norm_loop_kernel(
    const T* __restrict__ x, const T* __restrict__ bias, const T* __restrict__ residual,
    const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y, T* __restrict__ residual_out,
    int rows, int cols, float eps) {
    __shared__ float red[2][32];
    const size_t off = (size_t)blockIdx.x * cols;
    const T* src = ADD ? residual_out + off : x + off;  // the values LN reads, as stored
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = to_f(x[off + c]);
        if (ADD) {
            v = round_to<T>(to_f(residual[off + c]) + v + (bias ? to_f(bias[c]) : 0.f));
            residual_out[off + c] = from_f<T>(v);  // re-read below by this same thread
        }
        s += v;
    }
    const float mean = row_sum(s, red[0]) / cols;
    float q = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = to_f(src[c]) - mean;
        q += d * d;
    }
    const float rstd = rsqrtf(row_sum(q, red[1]) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        y[off + c] = from_f<T>((to_f(src[c]) - mean) * rstd * (w ? to_f(w[c]) : 1.f) + (b ? to_f(b[c]) : 0.f));
}

// ------------------------------------------------------------------------------------------------------------
// The RMSNorm family of the language model, one kernel body for four ops (MODE):
//   RMS:       y = x * rsqrt(mean(x^2) + eps) * (w_offset + w)        (w_offset 1: zero-centred weights)
//   ADD_RMS:   residual_out = round_T(residual + x);  y = RMS(residual_out as stored)
//   GATED_RMS: n = round_T(x * rsqrt(mean(x^2) + eps));  p = round_T(w * n);  y = p * silu(z)   (HF's roundings)
//   L2:        y = x * rsqrt(sum(x^2) + eps)                           (no weight)
// fp32 statistics, one rounding on store (plus the named intermediate roundings), like reference/norms.py.
// Both kernels are programmatic dependent launches (include/ptx.cuh): correct launched either way.
enum RmsMode { RMS = 0, ADD_RMS = 1, GATED_RMS = 2, L2 = 3 };

// Sum over the blockDim.x threads of a row. blockDim.x >= 32: row_sum (warp shuffles, then shared memory when a
// row spans several warps; every thread of the CTA must call it). blockDim.x < 32 (a power of two, several rows
// per warp, blockDim.x * blockDim.y a multiple of 32): xor shuffles inside each aligned group of lanes.
__device__ __forceinline__ float rms_row_sum(float v, float* sh) {
    if (blockDim.x >= 32) return row_sum(v, sh);
    for (int o = blockDim.x >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// silu(z) = z / (1 + exp(-z)) with the fast exp and divide (MUFU ex2 / rcp, a few ulp): the IEEE expf and division
// cost ~30 instructions an element, enough to make an element-wise kernel compute-bound on an H200.
// For z < -87, 1 + exp(-z) passes 2^126 and the quotient is 0 (the exact value is below 1e-36).
__device__ __forceinline__ float silu_f(float z) { return __fdividef(z, 1.f + __expf(-z)); }

// A 16-bit float's bits <-> fp32 (the low 16 bits of the unsigned).
template <typename T> __device__ __forceinline__ float bits16_to_f(unsigned bits);
template <> __device__ __forceinline__ float bits16_to_f<__nv_bfloat16>(unsigned bits) {
    return __uint_as_float(bits << 16);
}
template <> __device__ __forceinline__ float bits16_to_f<__half>(unsigned bits) {
    return __half2float(__ushort_as_half((unsigned short)bits));
}
template <typename T> __device__ __forceinline__ unsigned f_to_bits16(float f);
template <> __device__ __forceinline__ unsigned f_to_bits16<__nv_bfloat16>(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}
template <> __device__ __forceinline__ unsigned f_to_bits16<__half>(float f) {
    return __half_as_ushort(__float2half_rn(f));
}

// VEC elements of T kept packed in 32-bit words (a bf16/fp16 pair per register, not one element per register as
// an array of T tends to become): the register kernel holds whole rows this way, at the size they have in DRAM.
template <typename T, int VEC>
struct Packed {
    static constexpr int BYTES = VEC * (int)sizeof(T);
    static constexpr int WORDS = BYTES < 4 ? 1 : BYTES / 4;
    unsigned w[WORDS];

    __device__ __forceinline__ void load(const T* p) {
        if constexpr (BYTES >= 4) {
            const Vec<unsigned, WORDS> t = *reinterpret_cast<const Vec<unsigned, WORDS>*>(p);
#pragma unroll
            for (int i = 0; i < WORDS; ++i) w[i] = t.v[i];
        } else {
            w[0] = *reinterpret_cast<const unsigned short*>(p);
        }
    }
    __device__ __forceinline__ void store(T* p) const {
        if constexpr (BYTES >= 4) {
            Vec<unsigned, WORDS> t;
#pragma unroll
            for (int i = 0; i < WORDS; ++i) t.v[i] = w[i];
            *reinterpret_cast<Vec<unsigned, WORDS>*>(p) = t;
        } else {
            *reinterpret_cast<unsigned short*>(p) = (unsigned short)w[0];
        }
    }
    __device__ __forceinline__ float get(int k) const {
        if constexpr (sizeof(T) == 4) {
            return __uint_as_float(w[k]);
        } else {
            return bits16_to_f<T>((w[k >> 1] >> (16 * (k & 1))) & 0xffffu);
        }
    }
    __device__ __forceinline__ void set(int k, float f) {  // rounds f to T
        if constexpr (sizeof(T) == 4) {
            w[k] = __float_as_uint(f);
        } else {
            const unsigned bits = f_to_bits16<T>(f);
            const int sh = 16 * (k & 1);
            w[k >> 1] = (w[k >> 1] & ~(0xffffu << sh)) | (bits << sh);
        }
    }
};

// blockDim.x threads per row (a power of two below 32, or a multiple of 32 up to 1024), blockDim.y rows per CTA.
// Thread t keeps vectors t, t + blockDim.x, ..., t + (NPT - 1) blockDim.x of its row (VEC elements each, 16 bytes
// for the fast paths) packed in registers (with z for GATED_RMS): every input is read from DRAM once, all row
// loads are issued before the one reduction, and the output is written once. The weight vectors are read after
// the reduction (from L1/L2: every row reads them), which keeps registers for the row. cols % VEC == 0, every
// pointer VEC-aligned, cols, sx, so multiples of VEC, cols <= NPT * VEC * blockDim.x. No thread leaves before the
// reduction.
// pdl-early: w -- the norm weight
template <typename T, int VEC, int NPT, int MODE>
__global__ void __launch_bounds__(1024) rms_norm_kernel(
    const T* __restrict__ x, const T* __restrict__ other /* residual (ADD_RMS) or z (GATED_RMS) */,
    const T* __restrict__ w, T* __restrict__ y, T* __restrict__ residual_out, int rows, int cols, long long sx,
    long long so, float eps, float w_offset) {
    __shared__ float red[32];
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const size_t off = (size_t)row * cols;  // the outputs are contiguous; x and other have row strides sx, so
    // With at most 2 vectors a thread (the decode-sized configurations, lane groups, hidden 2560) the weights are
    // loaded with the row, before the reduction: one memory round trip less on the critical path. With 4 they
    // are read after it (registers: 4 weight vectors more would spill under 1024-thread CTAs' 64 registers).
    constexpr bool PRE_W = NPT <= 2 && MODE != L2;
    Packed<T, VEC> xv[NPT], ov[NPT], wv[PRE_W ? NPT : 1];
    // A programmatic launch (ptx.cuh's protocol): the next kernel may be scheduled now, and the weights (no kernel
    // writes them) are read while the previous kernel finishes; x and other only after the wait.
    allow_dependent_launch();
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
        const int c = (threadIdx.x + blockDim.x * i) * VEC;
        if (PRE_W && live && c < cols) wv[PRE_W ? i : 0].load(w + c);
    }
    wait_for_primary_grid();
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
        const int c = (threadIdx.x + blockDim.x * i) * VEC;
        if (live && c < cols) {
            xv[i].load(x + row * sx + c);
            if (MODE == ADD_RMS || MODE == GATED_RMS) ov[i].load(other + row * so + c);
        }
    }
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
        const int c = (threadIdx.x + blockDim.x * i) * VEC;
        if (!live || c >= cols) continue;
        if (MODE == ADD_RMS) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) xv[i].set(k, ov[i].get(k) + xv[i].get(k));
            xv[i].store(residual_out + off + c);
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const float f = xv[i].get(k);
            s += f * f;
        }
    }
    s = rms_row_sum(s, red);
    const float rstd = rsqrtf((MODE == L2 ? s : s / cols) + eps);
    if (!live) return;
#pragma unroll
    for (int i = 0; i < NPT; ++i) {
        const int c = (threadIdx.x + blockDim.x * i) * VEC;
        if (c >= cols) continue;
        Packed<T, VEC> wl;
        if (PRE_W) wl = wv[PRE_W ? i : 0];
        else if (MODE != L2) wl.load(w + c);
        float out[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const float f = xv[i].get(k);
            if (MODE == RMS || MODE == ADD_RMS) {
                out[k] = f * rstd * (w_offset + wl.get(k));
            } else if (MODE == GATED_RMS) {
                const float p = round_to<T>(wl.get(k) * round_to<T>(f * rstd));
                out[k] = p * silu_f(ov[i].get(k));
            } else {
                out[k] = f * rstd;
            }
        }
        store_f(y + off + c, out);
    }
}

// Any width: one row per CTA (blockDim.y == 1), scalar accesses, the row re-read (from cache) for the second pass.
// Only for rows too wide for the register kernel (more than 8 vectors a thread at 1024 threads).
template <typename T, int MODE>
__global__ void __launch_bounds__(1024) rms_norm_loop_kernel(
    const T* __restrict__ x, const T* __restrict__ other, const T* __restrict__ w, T* __restrict__ y,
    T* __restrict__ residual_out, int rows, int cols, long long sx, long long so, float eps, float w_offset) {
    __shared__ float red[32];
    pdl_begin();  // a programmatic launch (ptx.cuh): let the next kernel in, then wait for the previous one
    const size_t off = (size_t)blockIdx.x * cols;
    x += blockIdx.x * sx;
    other += blockIdx.x * so;
    const T* src = MODE == ADD_RMS ? residual_out + off : x;  // the values the norm reads, as stored
    float s = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = to_f(x[c]);
        if (MODE == ADD_RMS) {
            v = round_to<T>(to_f(other[c]) + v);
            residual_out[off + c] = from_f<T>(v);  // re-read below by this same thread
        }
        s += v * v;
    }
    s = row_sum(s, red);
    const float rstd = rsqrtf((MODE == L2 ? s : s / cols) + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float f = to_f(src[c]);
        float o;
        if (MODE == RMS || MODE == ADD_RMS) {
            o = f * rstd * (w_offset + to_f(w[c]));
        } else if (MODE == GATED_RMS) {
            o = round_to<T>(to_f(w[c]) * round_to<T>(f * rstd)) * silu_f(to_f(other[c]));
        } else {
            o = f * rstd;
        }
        y[off + c] = from_f<T>(o);
    }
}

}  // namespace norms
