// Vision attention prologue: split the fused QKV projection, add its bias, rotate q and k.
//   qkv[rows, 3*H*hd] = [q heads | k heads | v heads] (head-major); outputs q, k, v contiguous [rows, H, hd]:
//   q = rope(q_in + bq), k = rope(k_in + bk), v = v_in + bv, with NeoX rotate-half over the whole head:
//   out[j] = a cos[j] - b sin[j],  out[j + hd/2] = b cos[j] + a sin[j],  (a, b) = (x[j], x[j + hd/2]), j < hd/2,
//   cos/sin fp32 [rows, hd/2]. fp32 math, one rounding on store.
#include "include/convert.cuh"
#include "include/cp_async.cuh"
#include "include/ptx.cuh"
#include "include/reduce.cuh"

namespace rope {
using namespace qkern;

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
//   NORM (qk_norm_rope): y = round_T(x * rsqrt(mean(x^2) + eps) * (1 + w))   (the reference rounds rms_norm's output)
//   rope: out[j] = y[j] c[j] - y[j+r] s[j], out[j+r] = y[j+r] c[j] + y[j] s[j] for j < r; out[e] = y[e] for e >= 2r
// q is read at q_in + t * q_ts + h * q_hs (qg: the first d of each head's 2d; the gate half is never touched).
// A warp serves IPW heads of one kind (q or k) of one token: a token has ceil(Hq / IPW) q groups, then
// ceil(Hkv / IPW) k groups. The group's heads share the token's cos/sin and the weight, so those are loaded once,
// and every load (x, weight, cos/sin, v, and the cache row's cu_seqlens/lengths) is issued before any arithmetic
// waits on one: a warp makes one memory round trip. A lane owns NV * VEC consecutive elements of a head
// (d <= 32 * NV * VEC, d % VEC == 0). The rotation's partner element j +- r comes from another lane by a shuffle
// when r is a multiple of the lane's element count (Qwen3.5: r = 32, 8 per lane), else through shared memory.
// Cache (k_cache != nullptr; then a token also has ceil(Hkv / IPW) v groups, which only copy): token t of sequence b (the last b with cu[b] <= t, found by a
// warp-wide vote over cu_seqlens, 32 entries per step) goes to slot lengths[b] + t - cu[b] of k_cache/v_cache
// [B, S, Hkv, d], k as rotated and v copied; slots outside [0, S) are dropped (the wrapper's validate checks
// capacity on the host).
namespace qkrope {

__device__ __forceinline__ long long load_index(const void* p, int is64, long long i) {
    return is64 ? reinterpret_cast<const long long*>(p)[i] : (long long)reinterpret_cast<const int*>(p)[i];
}

}  // namespace qkrope

// MINB > 0: that many CTAs an SM in __launch_bounds__ instead of the rule (timing trials of the register budget).
// pdl-early: qw kw -- the q and k norm weights
template <typename T, int VEC, int NV, int IPW, bool LEAN, int MINB = 0>
__global__ void __launch_bounds__(128, MINB > 0 ? MINB : (LEAN && NV * VEC * IPW <= 32) ? 6 : 1) qk_norm_rope_kernel(
    const T* __restrict__ q_in, long long q_ts, int q_hs, const T* __restrict__ k_in, const T* __restrict__ qw,
    const T* __restrict__ kw, const float* __restrict__ cos, const float* __restrict__ sin,
    T* __restrict__ q_out, T* __restrict__ k_out, const T* __restrict__ v_in, T* __restrict__ k_cache,
    T* __restrict__ v_cache, const void* __restrict__ cu, int cu64, const void* __restrict__ lengths, int len64,
    int ntok, int Hq, int Hkv, int d, int r, int B, int S, int norm, float eps) {
    constexpr int E = NV * VEC;  // elements per lane
    __shared__ float buf[4][32 * E];  // the general rotation path only
    const int lane = threadIdx.x & 31, wib = threadIdx.x >> 5;
    const int Gq = (Hq + IPW - 1) / IPW, Gk = (Hkv + IPW - 1) / IPW;
    const int G = Gq + Gk * (k_cache != nullptr ? 2 : 1);  // q groups, k groups, (cache) v groups
    const long long gw = (long long)blockIdx.x * 4 + wib;  // 4 warps per CTA
    if (gw >= (long long)ntok * G) return;  // whole warps exit together
    const int t = (int)(gw / G), g = (int)(gw % G);
    const int kind = g < Gq ? 0 : g < Gq + Gk ? 1 : 2;  // 0: q heads, 1: k heads, 2: v heads (copied to the cache)
    const bool is_q = kind == 0;
    const int h0 = (kind == 0 ? g : kind == 1 ? g - Gq : g - Gq - Gk) * IPW;  // the group's first head
    const int nh = min(IPW, (is_q ? Hq : Hkv) - h0);
    const T* src = is_q ? q_in + t * q_ts + (long long)h0 * q_hs
                        : (kind == 1 ? k_in : v_in) + ((long long)t * Hkv + h0) * d;
    const long long hs = is_q ? q_hs : d;  // elements from one head of the input to the next
    T* dst = (is_q ? q_out + (long long)t * Hq * d : k_out + (long long)t * Hkv * d) + (long long)h0 * d;
    const int e0 = lane * E;
    const bool cache = !is_q && k_cache != nullptr;

    // 1. every load first: the weights (no kernel writes them) before waiting for the kernel before (a programmatic
    // dependent launch), then the rest
    allow_dependent_launch();
    float wv[E];
#pragma unroll
    for (int i = 0; i < E; ++i) wv[i] = 0.f;
    if (norm) {
        const T* w = is_q ? qw : kw;
#pragma unroll
        for (int n = 0; n < NV; ++n) {
            const int e = e0 + n * VEC;
            if (e < d) {
                float part[VEC];
                load_f(w + e, part);
#pragma unroll
                for (int i = 0; i < VEC; ++i) wv[n * VEC + i] = part[i];
            }
        }
    }
    wait_for_primary_grid(src, cos, sin, cu, lengths);  // q/k/v rows, the angles, the lengths: from kernels before
    Vec<T, VEC> xr[IPW][NV];
#pragma unroll
    for (int it = 0; it < IPW; ++it)
#pragma unroll
        for (int n = 0; n < NV; ++n) {
            const int e = e0 + n * VEC;
            if (it < nh && e < d) xr[it][n] = *reinterpret_cast<const Vec<T, VEC>*>(src + it * hs + e);
        }
    float cs[E], sn[E];  // cos, and sin signed for the half the element is in (- for j < r, + for r <= j < 2r)
    if (LEAN && E % 4 == 0) {  // r % E == 0 and 16-byte aligned tables (the host checks): a lane's E angles are
        // consecutive entries of one half, float4 loads
#pragma unroll
        for (int i = 0; i < E; ++i) { cs[i] = 1.f; sn[i] = 0.f; }
        if (e0 < 2 * r) {
            const int j0 = e0 < r ? e0 : e0 - r;
            const float sg = e0 < r ? -1.f : 1.f;
#pragma unroll
            for (int i = 0; i < E; i += 4) {
                const float4 c4 = *reinterpret_cast<const float4*>(cos + (long long)t * r + j0 + i);
                const float4 s4 = *reinterpret_cast<const float4*>(sin + (long long)t * r + j0 + i);
                cs[i] = c4.x; cs[i + 1] = c4.y; cs[i + 2] = c4.z; cs[i + 3] = c4.w;
                sn[i] = sg * s4.x; sn[i + 1] = sg * s4.y; sn[i + 2] = sg * s4.z; sn[i + 3] = sg * s4.w;
            }
        }
    } else {
#pragma unroll
        for (int i = 0; i < E; ++i) {
            const int e = e0 + i;
            cs[i] = 1.f;
            sn[i] = 0.f;
            if (e < 2 * r) {
                const int j = e < r ? e : e - r;
                cs[i] = cos[(long long)t * r + j];
                sn[i] = e < r ? -sin[(long long)t * r + j] : sin[(long long)t * r + j];
            }
        }
    }
    long long crow = -1;  // the cache row (in elements) of the group's first head, -1: not written
    if (cache) {
        // b = the last sequence with cu[b] <= t: cu is non-decreasing, so the entries <= t are a prefix
        int b = -1;
        long long cub = 0, lenb = 0;
        bool more = true;  // every entry so far <= t: the prefix may go on
        {  // the first 64 rows' entries in one round trip (decode batches), then 32 a step
            constexpr int J = 2;
            long long cj[J], lj[J];
#pragma unroll
            for (int k = 0; k < J; ++k) {
                const int j = k * 32 + lane;
                cj[k] = j < B ? qkrope::load_index(cu, cu64, j) : (1ll << 62);
                lj[k] = j < B ? qkrope::load_index(lengths, len64, j) : 0;
            }
#pragma unroll
            for (int k = 0; k < J; ++k) {
                if (!more) break;  // warp-uniform
                const unsigned m = __ballot_sync(0xffffffffu, cj[k] <= t);
                if (m) {
                    const int last = 31 - __clz(m);
                    b = k * 32 + last;
                    cub = __shfl_sync(0xffffffffu, cj[k], last);
                    lenb = __shfl_sync(0xffffffffu, lj[k], last);
                }
                more = m == 0xffffffffu;
            }
        }
        for (int j0 = 64; more && j0 < B; j0 += 32) {
            const int j = j0 + lane;
            const long long cj = j < B ? qkrope::load_index(cu, cu64, j) : (1ll << 62);
            const long long lj = j < B ? qkrope::load_index(lengths, len64, j) : 0;
            const unsigned m = __ballot_sync(0xffffffffu, cj <= t);
            if (m) {
                const int last = 31 - __clz(m);
                b = j0 + last;
                cub = __shfl_sync(0xffffffffu, cj, last);
                lenb = __shfl_sync(0xffffffffu, lj, last);
            }
            more = m == 0xffffffffu;
        }
        const long long slot = lenb + t - cub;
        if (b >= 0 && slot >= 0 && slot < S) crow = (((long long)b * S + slot) * Hkv + h0) * d;
    }
    if (kind == 2) {  // v heads: a copy into the cache
        if (crow >= 0) {
#pragma unroll
            for (int it = 0; it < IPW; ++it)
#pragma unroll
                for (int n = 0; n < NV; ++n) {
                    const int e = e0 + n * VEC;
                    if (it < nh && e < d) *reinterpret_cast<Vec<T, VEC>*>(v_cache + crow + (long long)it * d + e) = xr[it][n];
                }
        }
        return;
    }

    if constexpr (LEAN) {  // r % E == 0 (the host checks): the partner of a rotated element is in another lane
        // The IPW sums of squares straight from the loaded vectors, reduced side by side; then one head at a time
        // (normalise, rotate, store), so only one head's floats are live: fewer registers, more warps per SM,
        // more loads in flight.
        float ss[IPW];
#pragma unroll
        for (int it = 0; it < IPW; ++it) {
            ss[it] = 0.f;
#pragma unroll
            for (int n = 0; n < NV; ++n)
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const float f = (it < nh && e0 + n * VEC < d) ? to_f(xr[it][n].v[i]) : 0.f;
                    ss[it] += f * f;
                }
        }
        if (norm) {
#pragma unroll
            for (int it = 0; it < IPW; ++it) ss[it] = warp_sum(ss[it]);
        }
        const int pl = r == 0 ? lane : e0 < r ? lane + r / E : (e0 < 2 * r ? lane - r / E : lane);
#pragma unroll
        for (int it = 0; it < IPW; ++it) {
            if (it >= nh) break;  // warp-uniform
            const float inv = norm ? rsqrtf(ss[it] / (float)d + eps) : 1.f;
            float y[E];
#pragma unroll
            for (int n = 0; n < NV; ++n)
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const float f = e0 + n * VEC < d ? to_f(xr[it][n].v[i]) : 0.f;
                    y[n * VEC + i] = norm ? round_to<T>(f * inv * (1.f + wv[n * VEC + i])) : f;
                }
            if (r > 0) {
#pragma unroll
                for (int i = 0; i < E; ++i) {
                    const float p = __shfl_sync(0xffffffffu, y[i], pl);
                    if (e0 < 2 * r) y[i] = y[i] * cs[i] + p * sn[i];
                }
            }
#pragma unroll
            for (int n = 0; n < NV; ++n) {
                const int e = e0 + n * VEC;
                if (e < d) {
                    float part[VEC];
#pragma unroll
                    for (int i = 0; i < VEC; ++i) part[i] = y[n * VEC + i];
                    store_f(dst + (long long)it * d + e, part);
                    if (crow >= 0) store_f(k_cache + crow + (long long)it * d + e, part);
                }
            }
        }
        return;
    }

    // 2. the norms (IPW reductions side by side)
    float y[IPW][E];
#pragma unroll
    for (int it = 0; it < IPW; ++it)
#pragma unroll
        for (int n = 0; n < NV; ++n)
#pragma unroll
            for (int i = 0; i < VEC; ++i)
                y[it][n * VEC + i] = (it < nh && e0 + n * VEC < d) ? to_f(xr[it][n].v[i]) : 0.f;
    if (norm) {
        float ss[IPW];
#pragma unroll
        for (int it = 0; it < IPW; ++it) {
            ss[it] = 0.f;
#pragma unroll
            for (int i = 0; i < E; ++i) ss[it] += y[it][i] * y[it][i];
        }
#pragma unroll
        for (int it = 0; it < IPW; ++it) ss[it] = warp_sum(ss[it]);
#pragma unroll
        for (int it = 0; it < IPW; ++it) {
            const float inv = rsqrtf(ss[it] / (float)d + eps);
#pragma unroll
            for (int i = 0; i < E; ++i) y[it][i] = round_to<T>(y[it][i] * inv * (1.f + wv[i]));
        }
    }

    // 3. rotate the first 2r dims: out = y * c + partner * s (partner: element j + r, or j - r)
    if (r > 0 && r % E == 0) {
        const int pl = e0 < r ? lane + r / E : (e0 < 2 * r ? lane - r / E : lane);
#pragma unroll
        for (int it = 0; it < IPW; ++it)
#pragma unroll
            for (int i = 0; i < E; ++i) {
                const float p = __shfl_sync(0xffffffffu, y[it][i], pl);
                if (e0 < 2 * r) y[it][i] = y[it][i] * cs[i] + p * sn[i];
            }
    } else if (r > 0) {
        float* wb = buf[wib];
#pragma unroll
        for (int it = 0; it < IPW; ++it) {
            if (e0 < 2 * r) {
#pragma unroll
                for (int i = 0; i < E; ++i) wb[e0 + i] = y[it][i];
            }
            __syncwarp();
            if (e0 < 2 * r) {
#pragma unroll
                for (int i = 0; i < E; ++i) {
                    const int e = e0 + i;
                    if (e < 2 * r) y[it][i] = y[it][i] * cs[i] + wb[e < r ? e + r : e - r] * sn[i];
                }
            }
            __syncwarp();
        }
    }

    // 4. stores
#pragma unroll
    for (int it = 0; it < IPW; ++it)
#pragma unroll
        for (int n = 0; n < NV; ++n) {
            const int e = e0 + n * VEC;
            if (it < nh && e < d) {
                float part[VEC];
#pragma unroll
                for (int i = 0; i < VEC; ++i) part[i] = y[it][n * VEC + i];
                store_f(dst + (long long)it * d + e, part);
                if (crow >= 0) store_f(k_cache + crow + (long long)it * d + e, part);
            }
        }
}

// Staged qk_norm_rope / apply_rope for prefill sizes (no cache write): a CTA copies TB tokens' q and k heads, their
// cos/sin rows and the two weights into shared memory with cp.async (bytes in flight without registers: what a
// warp-per-heads kernel cannot keep at 55-67 % of the copy), then each warp takes (token, head) rows from shared
// memory: a lane owns 8 consecutive elements (d <= 256, d % 8 == 0), the sum of squares is one warp_sum, the
// rotation partner (r % 8 == 0) comes by a shuffle, and the row is written with one 16-byte store a lane.
// Shared layout: [TB][H = Hq + Hkv][d] inputs, [TB][2][r] cos then sin, [2][d] weights (q, k).
template <typename T>
__global__ void __launch_bounds__(256) qk_norm_rope_staged(
    const T* __restrict__ q_in, long long q_ts, int q_hs, const T* __restrict__ k_in, const T* __restrict__ qw,
    const T* __restrict__ kw, const float* __restrict__ cos, const float* __restrict__ sin,
    T* __restrict__ q_out, T* __restrict__ k_out, int ntok, int Hq, int Hkv, int d, int r, int norm, float eps,
    int TB) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int H = Hq + Hkv, CH = d / 8;  // 16-byte chunks per head row
    T* sx = reinterpret_cast<T*>(smem);
    float* sc = reinterpret_cast<float*>(smem + (size_t)TB * H * d * sizeof(T));
    T* sw = reinterpret_cast<T*>(sc + (size_t)TB * 2 * r);
    const int t0 = blockIdx.x * TB, nt = min(TB, ntok - t0), tid = threadIdx.x;
    const unsigned sxa = smem_u32(sx), sca = smem_u32(sc), swa = smem_u32(sw);
    pdl_begin();  // a programmatic dependent launch
    for (int c = tid; c < nt * H * CH; c += blockDim.x) {
        const int tt = c / (H * CH), rest = c % (H * CH), h = rest / CH, ch = rest % CH;
        const int t = t0 + tt;
        const T* src = h < Hq ? q_in + t * q_ts + (long long)h * q_hs + ch * 8
                              : k_in + ((long long)t * Hkv + (h - Hq)) * d + ch * 8;
        cp_async16(sxa + (unsigned)(c * 16), src, true);
    }
    for (int c = tid; c < nt * 2 * (r / 4); c += blockDim.x) {  // cos rows then sin rows, 4 floats a copy
        const int tt = c / (2 * (r / 4)), rest = c % (2 * (r / 4)), which = rest / (r / 4), j = (rest % (r / 4)) * 4;
        const float* src = (which ? sin : cos) + (long long)(t0 + tt) * r + j;
        cp_async16(sca + (unsigned)(((tt * 2 + which) * r + j) * 4), src, true);
    }
    if (norm) {
        for (int c = tid; c < 2 * CH; c += blockDim.x)
            cp_async16(swa + (unsigned)(c * 16), (c < CH ? qw : kw) + (c % CH) * 8, true);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    const int lane = tid & 31, warp = tid >> 5, e0 = lane * 8;
    const bool live = e0 < d;
    const int pl = r == 0 ? lane : e0 < r ? lane + r / 8 : (e0 < 2 * r ? lane - r / 8 : lane);
    for (int item = warp; item < nt * H; item += blockDim.x / 32) {
        const int tt = item / H, h = item % H, t = t0 + tt;
        const bool is_q = h < Hq;
        float y[8];
        if (live) {
            const Vec<T, 8> xv = *reinterpret_cast<const Vec<T, 8>*>(sx + (size_t)item * d + e0);
#pragma unroll
            for (int i = 0; i < 8; ++i) y[i] = to_f(xv.v[i]);
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) y[i] = 0.f;
        }
        if (norm) {
            float ss = 0.f;
#pragma unroll
            for (int i = 0; i < 8; ++i) ss += y[i] * y[i];
            const float inv = rsqrtf(warp_sum(ss) / (float)d + eps);
            if (live) {
                const Vec<T, 8> wv = *reinterpret_cast<const Vec<T, 8>*>(sw + (is_q ? 0 : d) + e0);
#pragma unroll
                for (int i = 0; i < 8; ++i) y[i] = round_to<T>(y[i] * inv * (1.f + to_f(wv.v[i])));
            }
        }
        if (r > 0) {
            const int j0 = e0 < r ? e0 : e0 - r;
            const float sg = e0 < r ? -1.f : 1.f;
            const float* cr = sc + (size_t)tt * 2 * r;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float p = __shfl_sync(0xffffffffu, y[i], pl);
                if (e0 < 2 * r) y[i] = y[i] * cr[j0 + i] + p * sg * cr[r + j0 + i];
            }
        }
        if (live) {
            T* dst = is_q ? q_out + ((long long)t * Hq + h) * d : k_out + ((long long)t * Hkv + (h - Hq)) * d;
            store_f(dst + e0, y);
        }
    }
}

// Streaming qk_norm_rope / apply_rope for prefill sizes (no cache write; 16-bit, d <= 256, d % 8 == 0, r % 8 == 0,
// 16-byte aligned): each warp walks the items (token, group of IPW heads of one kind, q groups first) with the
// stride of the grid's warp count through its own STAGES-deep cp.async ring in shared memory: the loads of the
// next STAGES - 1 items are in flight while an item is normalised, rotated and stored, and hold no registers. A lane
// copies, and later reads, its own 16 bytes of each head row; the cos (sin) entries a rotating lane needs are
// copied by it or its partner lane r / 8 away, so the ring's only barriers are two __syncwarp a step. The weights are
// loaded once a warp, before waiting for the kernel before (PDL). Item i is token i / G and group (i + token) % G:
// with the plain i % G a warp whose stride is a multiple of G would only ever get one kind of group (8:2 heads:
// a third of the warps only the half-full k group), and the q warps would set the pace. Dynamic shared memory:
// 8 warps x STAGES x slot, slot = IPW * d * 2 + 2 * r * 4 bytes (head rows, then cos and sin).
// Timing trials: PF (128 or 256) asks L2 to fetch that many bytes around each head-row copy's miss (the
// .L2::128B/256B prefetch size of cp.async) instead of the sectors asked for; CS stores the outputs with the
// streaming (evict-first) hint, so the written rows do not push the next items' input rows out of L2.
namespace qkstream {
template <int PF>
__device__ __forceinline__ void copy16(unsigned dst, const void* src) {
    if constexpr (PF == 256) {
        asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
    } else if constexpr (PF == 128) {
        asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
    } else {
        cp_async16(dst, src, true);
    }
}
template <typename T, bool CS>
__device__ __forceinline__ void store8(T* p, const float (&y)[8]) {
    if constexpr (CS) {
        Vec<T, 8> t;
#pragma unroll
        for (int i = 0; i < 8; ++i) t.v[i] = from_f<T>(y[i]);
        __stcs(reinterpret_cast<uint4*>(p), *reinterpret_cast<const uint4*>(&t));
    } else {
        store_f(p, y);
    }
}
}  // namespace qkstream

// pdl-early: qw kw -- the q and k norm weights
template <typename T, int IPW, int STAGES, int PF = 0, bool CS = false>
__global__ void __launch_bounds__(256, 4) qk_norm_rope_stream(
    const T* __restrict__ q_in, long long q_ts, int q_hs, const T* __restrict__ k_in, const T* __restrict__ qw,
    const T* __restrict__ kw, const float* __restrict__ cos, const float* __restrict__ sin,
    T* __restrict__ q_out, T* __restrict__ k_out, int ntok, int Hq, int Hkv, int d, int r, int norm, float eps) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int lane = threadIdx.x & 31, e0 = lane * 8;
    const bool live = e0 < d, rot = e0 < 2 * r;
    const int Gq = (Hq + IPW - 1) / IPW, G = Gq + (Hkv + IPW - 1) / IPW;
    // 32-bit item arithmetic (the host keeps ntok * G below 2^31)
    const unsigned items = (unsigned)ntok * G, nw = gridDim.x * (blockDim.x / 32);
    const unsigned first = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    const int slot = IPW * d * 2 + 2 * r * 4;
    const unsigned ring = smem_u32(smem) + (unsigned)((threadIdx.x >> 5) * STAGES * slot);
    const int j0 = e0 < r ? e0 : e0 - r;
    allow_dependent_launch();
    Vec<T, 8> wq, wk;  // packed: converted where used
    if (norm && live) {
        wq = *reinterpret_cast<const Vec<T, 8>*>(qw + e0);
        wk = *reinterpret_cast<const Vec<T, 8>*>((kw != nullptr ? kw : qw) + e0);
    }
    wait_for_primary_grid();
    auto issue = [&](unsigned k) {  // the warp's k-th item into ring slot k % STAGES (always one commit group)
        const unsigned item = first + k * nw;
        if (item < items) {
            const int t = (int)(item / G), g = (int)((item % G + t) % G);  // groups rotated by t: see above
            const bool is_q = g < Gq;
            const int h0 = (is_q ? g : g - Gq) * IPW, nh = min(IPW, (is_q ? Hq : Hkv) - h0);
            const T* src = is_q ? q_in + t * q_ts + (long long)h0 * q_hs : k_in + ((long long)t * Hkv + h0) * d;
            const long long hs = is_q ? q_hs : d;
            const unsigned base = ring + (unsigned)((k % STAGES) * slot);
            if (live) {
#pragma unroll
                for (int h = 0; h < IPW; ++h)
                    if (h < nh) qkstream::copy16<PF>(base + (unsigned)((h * d + e0) * 2), src + h * hs + e0);
            }
            if (rot) {  // lanes of the first half copy 8 cos entries, their partners of the second half 8 sin
                const bool second = e0 >= r;
                const unsigned cb = base + (unsigned)(IPW * d * 2 + (second ? r + j0 : j0) * 4);
                const float* cp = (second ? sin : cos) + (long long)t * r + j0;
                cp_async16(cb, cp, true);
                cp_async16(cb + 16, cp + 4, true);
            }
        }
        cp_async_commit();
    };
    const float sg = e0 < r ? -1.f : 1.f;
    const int pl = r == 0 ? lane : e0 < r ? lane + r / 8 : (rot ? lane - r / 8 : lane);
#pragma unroll
    for (unsigned k = 0; k < STAGES - 1; ++k) issue(k);
    for (unsigned k = 0; first + k * nw < items; ++k) {  // warp-uniform: the shuffles see every lane
        issue(k + STAGES - 1);
        cp_async_wait<STAGES - 1>();  // this lane's copies of item k landed
        __syncwarp();                 // and its partner's (the cos / sin halves)
        const unsigned item = first + k * nw;
        const int t = (int)(item / G), g = (int)((item % G + t) % G);  // groups rotated by t: see above
        const bool is_q = g < Gq;
        const int h0 = (is_q ? g : g - Gq) * IPW, nh = min(IPW, (is_q ? Hq : Hkv) - h0);
        T* dst = is_q ? q_out + ((long long)t * Hq + h0) * d : k_out + ((long long)t * Hkv + h0) * d;
        const unsigned char* sb = smem + ((threadIdx.x >> 5) * STAGES + (int)(k % STAGES)) * slot;
        // the rows are read from shared memory twice (sums of squares, then the math): fewer live registers
        float ssq[IPW];
#pragma unroll
        for (int h = 0; h < IPW; ++h) {
            ssq[h] = 0.f;
            if (h < nh && live) {
                const Vec<T, 8> x = *reinterpret_cast<const Vec<T, 8>*>(sb + (h * d + e0) * 2);
#pragma unroll
                for (int i = 0; i < 8; ++i) ssq[h] += to_f(x.v[i]) * to_f(x.v[i]);
            }
        }
        if (norm) {
#pragma unroll
            for (int h = 0; h < IPW; ++h) ssq[h] = warp_sum(ssq[h]);
        }
        const float* cb = reinterpret_cast<const float*>(sb + IPW * d * 2) + j0;  // cos, then sin at + r
        const Vec<T, 8>& w = is_q ? wq : wk;
#pragma unroll
        for (int h = 0; h < IPW; ++h) {
            if (h >= nh) break;  // warp-uniform
            const float inv = norm ? rsqrtf(ssq[h] / (float)d + eps) : 1.f;
            float y[8];
            Vec<T, 8> x;
            if (live) x = *reinterpret_cast<const Vec<T, 8>*>(sb + (h * d + e0) * 2);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float f = live ? to_f(x.v[i]) : 0.f;
                y[i] = norm ? round_to<T>(f * inv * (1.f + to_f(w.v[i]))) : f;
            }
            if (r > 0) {
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const float p = __shfl_sync(0xffffffffu, y[i], pl);
                    if (rot) y[i] = y[i] * cb[i] + p * sg * cb[r + i];
                }
            }
            if (live) qkstream::store8<T, CS>(dst + (long long)h * d + e0, y);
        }
        __syncwarp();  // every lane is done with this slot before the next step's copies refill it
    }
    cp_async_wait<0>();
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
    allow_dependent_launch();  // a programmatic dependent launch: the constant table is read before the wait
    const float f = inv_freq[j];
    wait_for_primary_grid();
    int axis;
    if (interleaved) {
        axis = (j % 3 == 1 && j < 3 * sH) ? 1 : (j % 3 == 2 && j < 3 * sW) ? 2 : 0;
    } else {
        axis = (j >= sT) + (j >= sT + sH);
    }
    const long long p = qkrope::load_index(pos, pos64, axis * ps0 + t * ps1);
    const float angle = (float)p * f;
    float s, c;
    sincosf(angle, &s, &c);
    cos[i] = c;
    sin[i] = s;
}

}  // namespace rope
