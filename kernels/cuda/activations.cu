// y = gelu(x + bias) over x[rows, cols] with bias[cols] (or null); fp32 math, one rounding on store.
//   TANH=true:  0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3)))   (gelu_pytorch_tanh; exact tanhf)
//   TANH=false: 0.5 v (1 + erf(v / sqrt(2)))                       (exact GELU)
#include "include/convert.cuh"
#include "include/ptx.cuh"
#include "include/reduce.cuh"

namespace activations {
using namespace qkern;

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

// ------------------------------------------------------------------------------------------------------------
// Two-input gates of the language model, y[r, c] = f(a[r * sa + c], b[r * sb + c]) over rows x cols, y contiguous:
//   SILU_MUL:     a = gate, b = up:   silu(gate) * up = gate / (1 + exp(-gate)) * up     (SwiGLU)
//   SIGMOID_GATE: a = o,    b = gate: o * sigmoid(gate) = o / (1 + exp(-gate))          (attention output gate)
// The row strides sa, sb take views without a copy: the two halves of a fused gate/up GEMM output, or the gate
// half of q_proj's [T, H, 2 d] output. fp32 math, one rounding on store.
enum GateOp { SILU_MUL = 0, SIGMOID_GATE = 1 };

// The fast exp and divide (MUFU ex2 / rcp, a few ulp): IEEE expf and division cost ~30 instructions an element,
// which made these kernels compute-bound (55 % of copy on an H200) and a decode call one warp's long serial chain.
// 1 + exp(-v) past 2^126 (v < -87) gives a quotient of 0, where the exact value is below 1e-36.
template <int OP>
__device__ __forceinline__ float gate_op(float a, float b) {
    if (OP == SILU_MUL) return __fdividef(a, 1.f + __expf(-a)) * b;
    return __fdividef(a, 1.f + __expf(-b));
}

// blockDim = (column vectors, row groups); each thread owns one column vector and ROWS rows of it per step (all
// 2 * ROWS loads issued before any math), grid-striding over rows when gridDim.y hits its limit. ROWS = 4 for
// large calls (loads in flight), 1 for small ones (decode: more threads, short per-thread chains).
// cols, sa, sb multiples of VEC; pointers VEC-aligned.
template <typename T, int VEC, int OP, int ROWS>
__global__ void __launch_bounds__(256) gate_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                                   T* __restrict__ y, int rows, int cols, long long sa,
                                                   long long sb) {
    pdl_begin();  // a programmatic launch (include/ptx.cuh): let the next kernel in, wait for the previous one
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (c >= cols) return;
    for (int r0 = (blockIdx.y * blockDim.y + threadIdx.y) * ROWS; r0 < rows; r0 += gridDim.y * blockDim.y * ROWS) {
        Vec<T, VEC> av[ROWS], bv[ROWS];
#pragma unroll
        for (int i = 0; i < ROWS; ++i) {
            if (r0 + i < rows) {
                av[i] = *reinterpret_cast<const Vec<T, VEC>*>(a + (r0 + i) * sa + c);
                bv[i] = *reinterpret_cast<const Vec<T, VEC>*>(b + (r0 + i) * sb + c);
            }
        }
#pragma unroll
        for (int i = 0; i < ROWS; ++i) {
            if (r0 + i < rows) {
                float out[VEC];
#pragma unroll
                for (int k = 0; k < VEC; ++k) out[k] = gate_op<OP>(to_f(av[i].v[k]), to_f(bv[i].v[k]));
                store_f(y + (size_t)(r0 + i) * cols + c, out);
            }
        }
    }
}

}  // namespace activations
