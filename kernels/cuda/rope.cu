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

// ------------------------------------------------------------------------------------------------------------
// The language model's gated attention input side (reference.qk_norm_rope), and apply_rope on its own.
// One warp per IPW consecutive (token, head) items; a token has Hq q items then Hkv k items. A lane owns NV * VEC consecutive
// elements of the head (d <= 32 * NV * VEC, d % VEC == 0).
//   NORM (qk_norm_rope): y = round_T(x * rsqrt(mean(x^2) + eps) * (1 + w))   (the reference rounds rms_norm's output)
//   rope: out[j] = y[j] c[j] - y[j+r] s[j], out[j+r] = y[j+r] c[j] + y[j] s[j] for j < r; out[e] = y[e] for e >= 2r
// q is read at q_in + t * q_ts + h * q_hs (qg: the first d of each head's 2d; the gate half is never touched).
// Cache (k_cache != nullptr, k items only): token t of sequence b (cu[b] <= t < cu[b+1], found by binary search on
// the device) goes to slot lengths[b] + t - cu[b] of k_cache/v_cache [B, S, Hkv, d], k as rotated and v copied;
// slots >= S are dropped (the kernel cannot raise; the wrapper's validate checks capacity on the host).
namespace qkrope {

__device__ __forceinline__ long long load_index(const void* p, int is64, long long i) {
    return is64 ? reinterpret_cast<const long long*>(p)[i] : (long long)reinterpret_cast<const int*>(p)[i];
}

}  // namespace qkrope

// IPW items per warp, loaded together (more bytes in flight per warp; the reductions of the items overlap).
template <typename T, int VEC, int NV, int IPW>
__global__ void __launch_bounds__(256) qk_norm_rope_kernel(
    const T* __restrict__ q_in, long long q_ts, int q_hs, const T* __restrict__ k_in, const T* __restrict__ qw,
    const T* __restrict__ kw, const float* __restrict__ cos, const float* __restrict__ sin,
    T* __restrict__ q_out, T* __restrict__ k_out, const T* __restrict__ v_in, T* __restrict__ k_cache,
    T* __restrict__ v_cache, const void* __restrict__ cu, int cu64, const void* __restrict__ lengths, int len64,
    int ntok, int Hq, int Hkv, int d, int r, int B, int S, int norm, float eps) {
    constexpr int E = NV * VEC;  // elements per lane
    __shared__ float buf[8][IPW][32 * E];  // the rotary dims of each warp's heads, for the partner lookups
    const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
    const int Hh = Hq + Hkv;
    const long long total = (long long)ntok * Hh;
    const long long item0 = ((long long)blockIdx.x * 8 + wib) * IPW;
    if (item0 >= total) return;  // whole warps exit together
    const int e0 = lane * E;

    int t[IPW], h[IPW];
    bool ok[IPW];
    float y[IPW][E];
    float ss[IPW];
#pragma unroll
    for (int it = 0; it < IPW; ++it) {
        const long long item = item0 + it;
        ok[it] = item < total;
        t[it] = ok[it] ? (int)(item / Hh) : 0;
        h[it] = ok[it] ? (int)(item % Hh) : 0;
        const T* src = h[it] < Hq ? q_in + t[it] * q_ts + (long long)h[it] * q_hs
                                  : k_in + ((long long)t[it] * Hkv + h[it] - Hq) * d;
        ss[it] = 0.f;
#pragma unroll
        for (int n = 0; n < NV; ++n) {
            const int e = e0 + n * VEC;
            float part[VEC];
            if (ok[it] && e < d) {
                load_f(src + e, part);
            } else {
#pragma unroll
                for (int i = 0; i < VEC; ++i) part[i] = 0.f;
            }
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                y[it][n * VEC + i] = part[i];
                ss[it] += part[i] * part[i];
            }
        }
    }
    if (norm) {
#pragma unroll
        for (int it = 0; it < IPW; ++it) ss[it] = warp_sum(ss[it]);
#pragma unroll
        for (int it = 0; it < IPW; ++it) {
            const float inv = rsqrtf(ss[it] / (float)d + eps);
            const T* w = h[it] < Hq ? qw : kw;
#pragma unroll
            for (int n = 0; n < NV; ++n) {
                const int e = e0 + n * VEC;
                if (e < d) {
                    float wv[VEC];
                    load_f(w + e, wv);
#pragma unroll
                    for (int i = 0; i < VEC; ++i)
                        y[it][n * VEC + i] = round_to<T>(y[it][n * VEC + i] * inv * (1.f + wv[i]));
                }
            }
        }
    }
    // rotate the first 2r dims: each lane publishes its y, then reads the partner element j +- r
    if (e0 < 2 * r) {
#pragma unroll
        for (int it = 0; it < IPW; ++it)
#pragma unroll
            for (int i = 0; i < E; ++i) buf[wib][it][e0 + i] = y[it][i];
    }
    __syncwarp();
    if (e0 < 2 * r) {
#pragma unroll
        for (int it = 0; it < IPW; ++it) {
            const float* wb = buf[wib][it];
            const float* cr = cos + (long long)t[it] * r;
            const float* sr = sin + (long long)t[it] * r;
#pragma unroll
            for (int i = 0; i < E; ++i) {
                const int e = e0 + i;
                if (e < r) {
                    y[it][i] = wb[e] * cr[e] - wb[e + r] * sr[e];
                } else if (e < 2 * r) {
                    y[it][i] = wb[e] * cr[e - r] + wb[e - r] * sr[e - r];
                }
            }
        }
    }
#pragma unroll
    for (int it = 0; it < IPW; ++it) {
        if (!ok[it]) continue;
        const bool is_q = h[it] < Hq;
        const int hk = h[it] - Hq;
        T* dst = is_q ? q_out + ((long long)t[it] * Hq + h[it]) * d : k_out + ((long long)t[it] * Hkv + hk) * d;
        int slot = -1;
        long long crow = 0;
        if (!is_q && k_cache != nullptr) {
            // the sequence b holding token t: the last b with cu[b] <= t (empty sequences before it share its start)
            int lo = 0, hi = B - 1;
            while (lo < hi) {
                const int mid = (lo + hi + 1) >> 1;
                if (qkrope::load_index(cu, cu64, mid) <= t[it]) lo = mid; else hi = mid - 1;
            }
            const long long s = qkrope::load_index(lengths, len64, lo) + t[it] - qkrope::load_index(cu, cu64, lo);
            if (s >= 0 && s < S) {
                slot = (int)s;
                crow = (((long long)lo * S + slot) * Hkv + hk) * d;
            }
        }
#pragma unroll
        for (int n = 0; n < NV; ++n) {
            const int e = e0 + n * VEC;
            if (e < d) {
                float part[VEC];
#pragma unroll
                for (int i = 0; i < VEC; ++i) part[i] = y[it][n * VEC + i];
                store_f(dst + e, part);
                if (slot >= 0) {
                    store_f(k_cache + crow + e, part);
                    float vv[VEC];
                    load_f(v_in + ((long long)t[it] * Hkv + hk) * d + e, vv);
                    store_f(v_cache + crow + e, vv);
                }
            }
        }
    }
}

// mRoPE tables (reference.mrope_cos_sin): one thread per (token, frequency j); the frequency's axis
// (interleaved: H if j % 3 == 1 and j < 3 sH, W if j % 3 == 2 and j < 3 sW, else T; chunked: T below sT, H below
// sT + sH, else W), angle = float(positions[axis, t]) * inv_freq[j] in fp32 (inv_freq: the reference's fp32 table,
// so the angle has the same bits), then the accurate sincosf (never built with fast math).
__global__ void __launch_bounds__(256) mrope_cos_sin_kernel(
    const void* __restrict__ pos, int pos64, long long ps0, long long ps1, const float* __restrict__ inv_freq,
    int ntok, int r, int sT, int sH, int sW, int interleaved, float* __restrict__ cos, float* __restrict__ sin) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)ntok * r) return;
    const int t = (int)(i / r), j = (int)(i % r);
    int axis;
    if (interleaved) {
        axis = (j % 3 == 1 && j < 3 * sH) ? 1 : (j % 3 == 2 && j < 3 * sW) ? 2 : 0;
    } else {
        axis = (j >= sT) + (j >= sT + sH);
    }
    const long long p = qkrope::load_index(pos, pos64, axis * ps0 + t * ps1);
    const float angle = (float)p * inv_freq[j];
    float s, c;
    sincosf(angle, &s, &c);
    cos[i] = c;
    sin[i] = s;
}
