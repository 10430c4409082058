// LayerNorm, optionally fused with the residual add that precedes it in a pre-norm block.
//   ADD=false: y = LN(x) * w + b
//   ADD=true:  residual_out = round_T(residual + x + bias);  y = LN(residual_out) * w + b
// Any of bias, w, b may be null (no bias / scale 1 / shift 0).
// Statistics in fp32 on the values as stored (so y matches LN of the residual_out tensor), biased variance.
#include "common.cuh"

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
