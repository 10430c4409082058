// y = gelu(x + bias) over x[rows, cols] with bias[cols] (or null); fp32 math, one rounding on store.
//   TANH=true:  0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3)))   (gelu_pytorch_tanh; exact tanhf)
//   TANH=false: 0.5 v (1 + erf(v / sqrt(2)))                       (exact GELU)
#include "common.cuh"

template <bool TANH>
__device__ __forceinline__ float gelu(float v) {
    if (TANH) return 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    return 0.5f * v * (1.f + erff(v * 0.7071067811865476f));
}

// Each thread owns one column vector (its bias loaded once) and walks ROWS rows of it per step, issuing all
// loads before any math. grid = (ceil(cols/VEC / blockDim.x), row blocks); cols % VEC == 0, pointers aligned.
template <typename T, int VEC, bool TANH>
__global__ void __launch_bounds__(256) bias_gelu_kernel(const T* __restrict__ x, const T* __restrict__ bias,
                                                        T* __restrict__ y, int rows, int cols) {
    constexpr int ROWS = 4;
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (c >= cols) return;
    float bb[VEC];
    if (bias) {
        load_f(bias + c, bb);
    } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) bb[k] = 0.f;
    }
    for (int r0 = blockIdx.y * ROWS; r0 < rows; r0 += gridDim.y * ROWS) {
        float v[ROWS][VEC];
#pragma unroll
        for (int i = 0; i < ROWS; ++i)
            if (r0 + i < rows) load_f(x + (size_t)(r0 + i) * cols + c, v[i]);
#pragma unroll
        for (int i = 0; i < ROWS; ++i) {
            if (r0 + i < rows) {
#pragma unroll
                for (int k = 0; k < VEC; ++k) v[i][k] = gelu<TANH>(v[i][k] + bb[k]);
                store_f(y + (size_t)(r0 + i) * cols + c, v[i]);
            }
        }
    }
}
