// Vision attention prologue: split the fused QKV projection, add its bias, rotate q and k.
//   qkv[rows, 3*H*hd] = [q heads | k heads | v heads] (head-major); outputs q, k, v contiguous [rows, H, hd]:
//   q = rope(q_in + bq), k = rope(k_in + bk), v = v_in + bv, with NeoX rotate-half over the whole head:
//   out[j] = a cos[j] - b sin[j],  out[j + hd/2] = b cos[j] + a sin[j],  (a, b) = (x[j], x[j + hd/2]), j < hd/2,
//   cos/sin fp32 [rows, hd/2]. fp32 math, one rounding on store.
#include "common.cuh"

// Work items of one row: P "pair" items for q then P for k (VP elements of a and the matching VP of b), then
// Q "copy" items for v (VV elements). grid.x covers the items (a warp stays on one kind except at the borders);
// each thread serves ROWS rows per step with its bias loaded once. hd/2 % VP == 0, hd % VV == 0, aligned.
template <typename T, int VP, int VV, bool BIAS>
__global__ void __launch_bounds__(256) qkv_bias_rope_kernel(
    const T* __restrict__ qkv, const T* __restrict__ bias, const float* __restrict__ cos,
    const float* __restrict__ sin, T* __restrict__ q, T* __restrict__ k, T* __restrict__ v,
    int rows, int heads, int hd) {
    constexpr int ROWS = 4;
    const int half = hd >> 1, hw = heads * hd;
    const int P = heads * (half / VP), Q = hw / VV;
    const int it = blockIdx.x * blockDim.x + threadIdx.x;
    if (it >= 2 * P + Q) return;
    if (it < 2 * P) {
        const int which = it >= P;  // 0: q, 1: k
        const int p = it - which * P;
        const int h = p / (half / VP), j = (p % (half / VP)) * VP;
        const int src = which * hw + h * hd + j, dst = h * hd + j;
        T* __restrict__ out = which ? k : q;
        float ba[VP], bb[VP];
#pragma unroll
        for (int e = 0; e < VP; ++e) ba[e] = bb[e] = 0.f;
        if (BIAS) {
            load_f(bias + src, ba);
            load_f(bias + src + half, bb);
        }
        for (int r0 = blockIdx.y * ROWS; r0 < rows; r0 += gridDim.y * ROWS) {
#pragma unroll
            for (int i = 0; i < ROWS; ++i) {
                const int n = r0 + i;
                if (n >= rows) continue;
                float a[VP], b[VP], c[VP], s[VP], oa[VP], ob[VP];
                load_f(qkv + (size_t)n * 3 * hw + src, a);
                load_f(qkv + (size_t)n * 3 * hw + src + half, b);
                load_f(cos + (size_t)n * half + j, c);
                load_f(sin + (size_t)n * half + j, s);
#pragma unroll
                for (int e = 0; e < VP; ++e) {
                    const float x0 = a[e] + ba[e], x1 = b[e] + bb[e];
                    oa[e] = x0 * c[e] - x1 * s[e];
                    ob[e] = x1 * c[e] + x0 * s[e];
                }
                store_f(out + (size_t)n * hw + dst, oa);
                store_f(out + (size_t)n * hw + dst + half, ob);
            }
        }
    } else {
        const int u = (it - 2 * P) * VV;
        float bv[VV];
#pragma unroll
        for (int e = 0; e < VV; ++e) bv[e] = 0.f;
        if (BIAS) load_f(bias + 2 * hw + u, bv);
        for (int r0 = blockIdx.y * ROWS; r0 < rows; r0 += gridDim.y * ROWS) {
#pragma unroll
            for (int i = 0; i < ROWS; ++i) {
                const int n = r0 + i;
                if (n >= rows) continue;
                float a[VV];
                load_f(qkv + (size_t)n * 3 * hw + 2 * hw + u, a);
#pragma unroll
                for (int e = 0; e < VV; ++e) a[e] += bv[e];
                store_f(v + (size_t)n * hw + u, a);
            }
        }
    }
}
