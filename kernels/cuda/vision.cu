// Bilinear position embedding added to the patch embeddings, in one pass:
//   y[n] = x[n] + sum_k weight[k, n] * table[index[k, n]]      (k = 0..3, fp32 math, one rounding)
// The table (2304 rows) stays in L2; no [4N, D] intermediate. An index outside [0, table_rows) gives a NaN
// row rather than an out-of-bounds read (the wrapper cannot check indices without a device sync).
#include "include/convert.cuh"

namespace vision {
using namespace qkern;

// Each thread owns one column vector and walks ROWS rows per step. grid = (ceil(cols/VEC / blockDim.x), row
// blocks); cols % VEC == 0, x / table / y VEC-aligned.
template <typename T, int VEC>
__global__ void __launch_bounds__(256) add_pos_embed_kernel(
    const T* __restrict__ x, const T* __restrict__ table, const int* __restrict__ index,
    const float* __restrict__ weight, T* __restrict__ y, int rows, int cols, int table_rows) {
    constexpr int ROWS = 4;
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (c >= cols) return;
    for (int r0 = blockIdx.y * ROWS; r0 < rows; r0 += gridDim.y * ROWS) {
        int idx[ROWS][4];  // all taps first, so the table loads of ROWS rows can be in flight together
        float wt[ROWS][4];
#pragma unroll
        for (int i = 0; i < ROWS; ++i)
#pragma unroll
            for (int tap = 0; tap < 4; ++tap) {
                const bool in = r0 + i < rows;
                idx[i][tap] = in ? index[(size_t)tap * rows + r0 + i] : 0;
                wt[i][tap] = in ? weight[(size_t)tap * rows + r0 + i] : 0.f;
            }
#pragma unroll
        for (int i = 0; i < ROWS; ++i) {
            if (r0 + i >= rows) continue;
            float acc[VEC], t[VEC], xv[VEC];
            bool bad = false;
#pragma unroll
            for (int k = 0; k < VEC; ++k) acc[k] = 0.f;
#pragma unroll
            for (int tap = 0; tap < 4; ++tap) {
                bad |= (unsigned)idx[i][tap] >= (unsigned)table_rows;
                load_f(table + (size_t)min(max(idx[i][tap], 0), table_rows - 1) * cols + c, t);
#pragma unroll
                for (int k = 0; k < VEC; ++k) acc[k] += wt[i][tap] * t[k];
            }
            load_f(x + (size_t)(r0 + i) * cols + c, xv);
#pragma unroll
            for (int k = 0; k < VEC; ++k) acc[k] = bad ? f32_nan() : xv[k] + acc[k];
            store_f(y + (size_t)(r0 + i) * cols + c, acc);
        }
    }
}

}  // namespace vision
