// Decode attention against a static KV cache (flash-decoding), and the cache append.
//
// decode_attention_split: grid (splits, Hkv * row groups, B), 128 threads (4 warps). CTA (s, kv head, b) takes the
// GQA group of query heads of one kv head (up to 16 rows: the M of m16n8k16, zero-padded) and key slots
// [s * chunk, min(len, (s + 1) * chunk)), where chunk = ceil(len / splits) is computed here from
// the row's length: the host fixes the grid from sizes it knows (B, the capacity), so a CUDA graph replays with any
// lengths, and CTAs past a row's last chunk exit at once. K and V tiles of TILE slots stream through a STAGES-deep
// cp.async ring in shared memory (zero-filled past the row's length, so garbage or NaN in unused slots is never
// read); each warp owns 16 slots of a tile: S = Q K^T and O += P V on tensor cores (bf16/fp16 operands, fp32
// accumulators), online softmax in fp32 (exp2 with log2(e) folded into the scale). At the end the 4 warps merge in
// shared memory; a row with one active chunk writes the output directly, otherwise each chunk writes its normalised
// partial output and log-sum-exp (fp32) and decode_attention_combine merges them.
//
// kv_cache_append: one CTA per new token; the token's row b is found by binary search in cu_seqlens on the device,
// its slot is lengths[b] + (t - cu[b]); writes to slots outside [0, S) are dropped (the caller checks capacity).
#include "include/convert.cuh"
#include "include/cp_async.cuh"
#include "include/mma_sm80.cuh"
#include "include/ptx.cuh"
#include "include/reduce.cuh"

namespace decode_attention {
using namespace qkern;

using namespace qkern;

namespace decode {

constexpr int NW = 4;           // warps per CTA
constexpr int TILE = 16 * NW;   // key slots per pipeline stage (16 per warp)
constexpr int ROWS = 16;        // query rows per CTA (mma M)

// Entry i of an int32 or int64 index tensor (one instantiation serves both: the flag is uniform).
__device__ __forceinline__ long long index_at(const void* p, int is64, int i) {
    return is64 ? static_cast<const long long*>(p)[i] : static_cast<long long>(static_cast<const int*>(p)[i]);
}

// Row b's length clamped to [0, S]: the kernels never address slots outside the cache, whatever lengths holds.
__device__ __forceinline__ int row_length(const void* lengths, int is64, int b, int S) {
    const long long L = index_at(lengths, is64, b);
    return L < 0 ? 0 : (L > S ? S : static_cast<int>(L));
}

// Slots per chunk for a row of length L split `splits` ways (0 for an empty row), and the number of chunks that
// hold slots. Not rounded to TILE: rounding would leave CTAs idle (8192 slots in 63 chunks: 131 each keeps 63 CTAs
// busy, 192 would keep 43) for the same number of tile steps. The split and combine kernels must agree on both.
__device__ __forceinline__ int chunk_of(int L, int splits) { return (L + splits - 1) / splits; }
__device__ __forceinline__ int active_chunks(int L, int splits) {
    return L == 0 ? 0 : (L + chunk_of(L, splits) - 1) / chunk_of(L, splits);
}

// Byte offset in a [rows][D] tile of 16-bit elements stored with the 16-byte chunk index XOR-swizzled by row & 7,
// so the 8 rows an ldmatrix reads (and the 8 chunks a row of cp.async writes) fall in distinct banks.
template <int D> __device__ __forceinline__ unsigned swz(int row, int chunk) {
    return static_cast<unsigned>(row * (D * 2) + ((chunk ^ (row & 7)) << 4));
}

// Programmatic dependent launch (include/ptx.cuh): the split kernel lets the combine kernel be scheduled at once,
// and the combine kernel waits (wait_for_primary_grid) until the split grid has finished and its writes are visible.

// Merge n normalised partials of the CTA's nrows query rows: partial s of row i is o[((bh0 + i) * stride + s0 + s)
// * D ...] with log-sum-exp lse[(bh0 + i) * stride + s0 + s] (log2 units); the result is out = sum_s 2^(lse_s - m)
// o_s / sum_s 2^(lse_s - m), either the final output (out != null, rounded to T) or a partial again (dst_o, dst_lse
// at index dst_s of stride dst_stride). Reads go to L2 (ld.global.cg): the partials were written by other CTAs.
template <typename T, int D>
__device__ __forceinline__ void merge_partials(const float* o, const float* lse, size_t bh0, int stride, int s0, int n,
                                               int nrows, T* out, float* dst_o, float* dst_lse, int dst_stride,
                                               int dst_s) {
    for (int i = threadIdx.x; i < nrows * (D / 4); i += blockDim.x) {
        const int row = i / (D / 4), col = (i % (D / 4)) * 4;
        const size_t base = (bh0 + row) * stride + s0;
        float m = f32_neg_inf();
        float den = 0.f, acc[4] = {0.f, 0.f, 0.f, 0.f};
        if (n <= 8) {  // every load issued before any is used: one L2 round trip (the fused merge's levels)
            float e[8];
            float4 v[8];
#pragma unroll
            for (int s = 0; s < 8; ++s) {
                e[s] = s < n ? __ldcg(lse + base + s) : f32_neg_inf();
                v[s] = s < n ? __ldcg(reinterpret_cast<const float4*>(o + (base + s) * D + col))
                             : make_float4(0.f, 0.f, 0.f, 0.f);
            }
#pragma unroll
            for (int s = 0; s < 8; ++s) m = fmaxf(m, e[s]);
#pragma unroll
            for (int s = 0; s < 8; ++s) {
                const float w = ex2(e[s] - m);  // 0 past n
                den += w;
                acc[0] += w * v[s].x; acc[1] += w * v[s].y; acc[2] += w * v[s].z; acc[3] += w * v[s].w;
            }
        } else {
            for (int s = 0; s < n; ++s) m = fmaxf(m, __ldcg(lse + base + s));
#pragma unroll 8
            for (int s = 0; s < n; ++s) {
                const float w = ex2(__ldcg(lse + base + s) - m);
                const float4 v = __ldcg(reinterpret_cast<const float4*>(o + (base + s) * D + col));
                den += w;
                acc[0] += w * v.x; acc[1] += w * v.y; acc[2] += w * v.z; acc[3] += w * v.w;
            }
        }
        const float inv = 1.f / den;
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[e] *= inv;
        if (out) {
            store_f<T, 4>(out + (bh0 + row) * D + col, acc);
        } else {
            const size_t d = (bh0 + row) * dst_stride + dst_s;
            *reinterpret_cast<float4*>(dst_o + d * D + col) = make_float4(acc[0], acc[1], acc[2], acc[3]);
            if (col == 0) dst_lse[d] = m + __log2f(den);
        }
    }
}

// The row's length read before griddepcontrol.wait, as a guess for early_prefetch (in the model the lengths were
// written many kernels before, by the step's glue). Read through L2 (ld.global.cg), never the L1/texture path: a
// stale line there would serve the real read after the wait.
__device__ __forceinline__ int guess_length(const void* lengths, int is64, int b, int S) {
    const long long L = is64 ? (long long)__ldcg(static_cast<const long long*>(lengths) + b)
                             : (long long)__ldcg(static_cast<const int*>(lengths) + b);
    return L < 0 ? 0 : (L > S ? S : static_cast<int>(L));
}

// Before griddepcontrol.wait (so while the kernel before still runs): L2 prefetches of the first `tiles` tiles of
// this CTA's chunk for the guessed length L. A prefetch is only a hint: a wrong guess costs a few lines, never a
// wrong answer. Not inlined: it stays out of the main loop's register budget.
template <int D>
__device__ __noinline__ void early_prefetch(const void* kc, const void* vc, long long k_sb, long long k_ss,
                                            long long v_sb, long long v_ss, int L, int b, int kvh, int splits,
                                            int split, int tiles) {
    if (split >= active_chunks(L, splits)) return;
    const int chunk = chunk_of(L, splits);
    const int t0 = split * chunk, t1 = min(L, min(t0 + chunk, t0 + tiles * TILE));
    const char* kb = static_cast<const char*>(kc) + ((size_t)b * k_sb + (size_t)kvh * D) * 2;
    const char* vb = static_cast<const char*>(vc) + ((size_t)b * v_sb + (size_t)kvh * D) * 2;
    constexpr int LINES = D * 2 / 128;  // 128-byte lines of one slot's head row
    for (int i = threadIdx.x; i < (t1 - t0) * 2 * LINES; i += NW * 32) {
        const int tok = t0 + i / (2 * LINES), line = i % (2 * LINES);
        const char* p = line < LINES ? kb + (size_t)tok * k_ss * 2 + line * 128
                                     : vb + (size_t)tok * v_ss * 2 + (line - LINES) * 128;
        asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
    }
}

}  // namespace decode

using namespace decode;

// pdl-early: lengths -- a guess of the row's length, for L2 prefetches only; the length used is read after the wait
template <typename T, int D, int STAGES>
__global__ void __launch_bounds__(NW * 32, 1) decode_attention_split(
    const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
    long long k_sb, long long k_ss, long long v_sb, long long v_ss, const void* __restrict__ lengths, int len64,
    T* __restrict__ out, float* __restrict__ ws_o, float* __restrict__ ws_lse,
    int S, int Hq, int Hkv, int r, int groups, int splits, float scale_log2, int prefetch,
    unsigned* __restrict__ counters, float* __restrict__ ws1_o, float* __restrict__ ws1_lse, int early,
    int all_partials) {
    static_assert(D % 64 == 0, "head_dim must be a multiple of 64");
    constexpr int CH = D / 8;  // 16-byte chunks per row
    extern __shared__ __align__(128) unsigned char smem[];
    T* sQ = reinterpret_cast<T*>(smem);                                  // [ROWS][D]
    T* sK = reinterpret_cast<T*>(smem + ROWS * D * 2);                   // [STAGES][TILE][D]
    T* sV = reinterpret_cast<T*>(smem + (ROWS + STAGES * TILE) * D * 2); // [STAGES][TILE][D]

    const int split = blockIdx.x, kvh = blockIdx.y / groups, grp = blockIdx.y % groups, b = blockIdx.z;
    const int h0 = kvh * r + grp * ROWS;                       // first query head of this CTA
    const int nrows = min(ROWS, r - grp * ROWS);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    allow_dependent_launch();
    if (early > 0)  // while the kernel before still runs (see early_prefetch)
        early_prefetch<D>(kc, vc, k_sb, k_ss, v_sb, v_ss, guess_length(lengths, len64, b, S), b, kvh, splits, split,
                          early);
    wait_for_primary_grid();  // launched programmatically: q, the cache and lengths come from the kernels before
    const int L = row_length(lengths, len64, b, S);
    const int nact = active_chunks(L, splits);
    if (split >= nact) {
        if (all_partials) {  // the combine merges every chunk (all_chunks): a chunk with no slot has weight 0
            for (int i = tid; i < nrows; i += NW * 32)
                ws_lse[((size_t)b * Hq + h0 + i) * splits + split] = f32_neg_inf();
        } else if (split == 0) {  // empty row: the output is the empty sum
            for (int i = tid; i < nrows * D; i += NW * 32)
                out[((size_t)b * Hq + h0 + i / D) * D + i % D] = from_f<T>(0.f);
        }
        return;
    }
    const int chunk = chunk_of(L, splits);
    const int t_begin = split * chunk, t_end = min(L, t_begin + chunk);
    const int ntiles = (t_end - t_begin + TILE - 1) / TILE;

    const T* kb = kc + (size_t)b * k_sb + (size_t)kvh * D;
    const T* vb = vc + (size_t)b * v_sb + (size_t)kvh * D;
    const unsigned sQa = smem_u32(sQ), sKa = smem_u32(sK), sVa = smem_u32(sV);

    // Q rows (zero past nrows) join the first commit group.
    for (int c = tid; c < ROWS * CH; c += NW * 32) {
        const int row = c / CH, col = c % CH;
        const bool ok = row < nrows;
        cp_async16(sQa + swz<D>(row, col), q + ((size_t)b * Hq + h0 + (ok ? row : 0)) * D + col * 8, ok);
    }
    auto load_tile = [&](int j) {  // tile j of the chunk into ring buffer j % STAGES (always a commit group)
        if (j < ntiles) {
            const int buf = j % STAGES, tok0 = t_begin + j * TILE;
#pragma unroll 4
            for (int c = tid; c < TILE * CH; c += NW * 32) {
                const int row = c / CH, col = c % CH, tok = tok0 + row;
                const bool ok = tok < t_end;
                const size_t tk = ok ? (size_t)tok : 0;
                const unsigned off = (unsigned)(buf * TILE * D * 2) + swz<D>(row, col);
                cp_async16(sKa + off, kb + tk * k_ss + col * 8, ok);
                cp_async16(sVa + off, vb + tk * v_ss + col * 8, ok);
            }
        }
        cp_async_commit();
    };
    // L2 prefetch `prefetch` tiles beyond the ring: the ring alone keeps 2 tiles (128 KB) in flight per SM, too
    // few to cover DRAM latency at 32 GB/s per SM; the prefetched lines make the ring's copies L2 hits.
    auto prefetch_tile = [&](int j) {
        if (j >= ntiles) return;
        const int tok0 = t_begin + j * TILE;
#pragma unroll
        for (int i = 0; i < TILE * D * 4 / 128 / (NW * 32); ++i) {  // 128-byte lines of K and V, 4 per thread
            const int idx = tid + i * NW * 32, tok = tok0 + idx / (D / 32), line = idx % (D / 32);
            if (tok < t_end) {
                const T* row = line < D / 64 ? kb + (size_t)tok * k_ss : vb + (size_t)tok * v_ss;
                const T* p = row + (line % (D / 64)) * 64;
                asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
            }
        }
    };
#pragma unroll
    for (int j = 0; j < STAGES - 1; ++j) load_tile(j);
    for (int j = 0; j < prefetch; ++j) prefetch_tile(STAGES - 1 + j);

    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {f32_neg_inf(), f32_neg_inf()}, l[2] = {0.f, 0.f};  // rows g and g + 8

    // ldmatrix lane roles: A (Q) matrices i = lane / 8 are (rows +8 if i odd, k +8 if i >= 2); B (K) matrices are
    // (slots +8 if i >= 2, k +8 if i odd); V (transposed B) matrices are (slots +8 if i odd, d +8 if i >= 2).
    const int li = lane >> 3, lr = lane & 7;
    const int qrow = lr + ((li & 1) << 3), qch = li >> 1;
    const int krow = warp * 16 + lr + ((li >> 1) << 3), kch = li & 1;
    const int vrow = warp * 16 + lr + ((li & 1) << 3), vch = li >> 1;

    for (int j = 0; j < ntiles; ++j) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // tile j landed for every thread; buffer (j - 1) % STAGES is free
        load_tile(j + STAGES - 1);
        if (prefetch) prefetch_tile(j + STAGES - 1 + prefetch);
        const unsigned kbuf = sKa + (unsigned)((j % STAGES) * TILE * D * 2);
        const unsigned vbuf = sVa + (unsigned)((j % STAGES) * TILE * D * 2);

        const int tok0 = t_begin + j * TILE + warp * 16;  // this warp's first slot
        if (tok0 >= t_end) continue;  // a partial last tile: no slot for this warp (m, l, o stay as they are)
        // two accumulator chains (even and odd k-steps) halve the dependent-mma latency of a tile's scores
        float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        float s2[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            u32 a[4], bk[4];
            ldsm_x4(a, sQa + swz<D>(qrow, 2 * ks + qch));
            ldsm_x4(bk, kbuf + swz<D>(krow, 2 * ks + kch));
            Mma<T>::k16((ks & 1) ? s2[0] : s[0], a, bk[0], bk[1]);
            Mma<T>::k16((ks & 1) ? s2[1] : s[1], a, bk[2], bk[3]);
        }
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] += s2[n][e];
        // mask slots past the chunk (zero-filled, but they must get no weight), scale into log2 units
        float mx[2] = {f32_neg_inf(), f32_neg_inf()};
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool ok = tok0 + n * 8 + 2 * t4 + (e & 1) < t_end;
                s[n][e] = ok ? s[n][e] * scale_log2 : f32_neg_inf();
                mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
            }
        float alpha[2];
        bool changed = false;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
            const float mn = fmaxf(m[h], mx[h]);
            const float mu = mn == f32_neg_inf() ? 0.f : mn;  // nothing seen yet: keep exp2 finite
            alpha[h] = mn != m[h] ? ex2(m[h] - mu) : 1.f;  // exactly 1 where the max stayed
            changed |= mn != m[h];
            m[h] = mn;
#pragma unroll
            for (int n = 0; n < 2; ++n) {
                s[n][2 * h] = ex2(s[n][2 * h] - mu);
                s[n][2 * h + 1] = ex2(s[n][2 * h + 1] - mu);
            }
            l[h] = l[h] * alpha[h] + s[0][2 * h] + s[0][2 * h + 1] + s[1][2 * h] + s[1][2 * h + 1];
        }
        if (__any_sync(0xffffffffu, changed)) {  // the running max moved (rare once a row has warmed up)
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                o[n][0] *= alpha[0]; o[n][1] *= alpha[0];
                o[n][2] *= alpha[1]; o[n][3] *= alpha[1];
            }
        }
        u32 pa[4];  // P as the A operand (rows g, g + 8; slots 2 t4 .. and 8 + 2 t4 ..)
        pa[0] = pack2<T>(s[0][0], s[0][1]);
        pa[1] = pack2<T>(s[0][2], s[0][3]);
        pa[2] = pack2<T>(s[1][0], s[1][1]);
        pa[3] = pack2<T>(s[1][2], s[1][3]);
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
            u32 bv[4];
            ldsm_x4_t(bv, vbuf + swz<D>(vrow, 2 * dp + vch));
            Mma<T>::k16(o[2 * dp], pa, bv[0], bv[1]);
            Mma<T>::k16(o[2 * dp + 1], pa, bv[2], bv[3]);
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // the K ring is free: merge the 4 warps there

    constexpr int OST = D + 8;  // padded row stride of the merge buffer (floats)
    float* red_o = reinterpret_cast<float*>(sK);   // [NW][ROWS][OST]
    float* red_m = red_o + NW * ROWS * OST;        // [NW][ROWS]
    float* red_l = red_m + NW * ROWS;              // [NW][ROWS]
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        l[h] = quad_sum(l[h]);
        const int row = g + 8 * h;
        if (row < nrows) {
            if (t4 == 0) { red_m[warp * ROWS + row] = m[h]; red_l[warp * ROWS + row] = l[h]; }
            float* dst = red_o + (warp * ROWS + row) * OST + 2 * t4;
#pragma unroll
            for (int n = 0; n < D / 8; ++n)
                *reinterpret_cast<float2*>(dst + n * 8) = make_float2(o[n][2 * h], o[n][2 * h + 1]);
        }
    }
    __syncthreads();
    const bool direct = nact == 1 && !all_partials;
    for (int i = tid; i < nrows * (D / 4); i += NW * 32) {
        const int row = i / (D / 4), col = (i % (D / 4)) * 4;
        float mm = f32_neg_inf();
#pragma unroll
        for (int w = 0; w < NW; ++w) mm = fmaxf(mm, red_m[w * ROWS + row]);  // finite: warp 0 saw a slot
        float den = 0.f, acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int w = 0; w < NW; ++w) {
            const float wt = ex2(red_m[w * ROWS + row] - mm);  // 0 for a warp that saw no slot
            den += wt * red_l[w * ROWS + row];
            const float4 v = *reinterpret_cast<const float4*>(red_o + (w * ROWS + row) * OST + col);
            acc[0] += wt * v.x; acc[1] += wt * v.y; acc[2] += wt * v.z; acc[3] += wt * v.w;
        }
        const float inv = 1.f / den;
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[e] *= inv;
        const size_t bh = (size_t)b * Hq + h0 + row;
        if (direct) {
            store_f<T, 4>(out + bh * D + col, acc);
        } else {
            *reinterpret_cast<float4*>(ws_o + (bh * splits + split) * D + col) =
                make_float4(acc[0], acc[1], acc[2], acc[3]);
            if (col == 0) ws_lse[bh * splits + split] = mm + __log2f(den);
        }
    }
    if (direct || counters == nullptr) return;  // no fused merge: decode_attention_combine runs next

    // Fused merge (counters given): the last CTA of each group of 8 chunks to finish merges the group, the last
    // group merger merges the groups. Each CTA counts its arrival after its partial is visible (threadfence, then
    // an atomic); the last arriver resets the counter to 0 for the next launch. Nothing waits: no deadlock whatever
    // the CTAs' schedule.
    __shared__ int last;
    const int rg = b * gridDim.y + blockIdx.y, n1max = (splits + 7) / 8, n1 = (nact + 7) / 8, g1 = split / 8;
    const int gsz = min(8, nact - g1 * 8);
    const size_t bh0 = (size_t)b * Hq + h0;
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        unsigned* c = counters + rg * n1max + g1;
        last = atomicAdd(c, 1u) == (unsigned)(gsz - 1);
        if (last) *c = 0u;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();  // acquire: the group's partials, made visible before their CTAs counted
    if (n1 == 1) {
        merge_partials<T, D>(ws_o, ws_lse, bh0, splits, 0, nact, nrows, out, nullptr, nullptr, 0, 0);
        return;
    }
    merge_partials<T, D>(ws_o, ws_lse, bh0, splits, g1 * 8, gsz, nrows, nullptr, ws1_o, ws1_lse, n1max, g1);
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        unsigned* c = counters + gridDim.z * gridDim.y * n1max + rg;
        last = atomicAdd(c, 1u) == (unsigned)(n1 - 1);
        if (last) *c = 0u;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    merge_partials<T, D>(ws1_o, ws1_lse, bh0, n1max, 0, n1, nrows, out, nullptr, nullptr, 0, 0);
}

// Merge the chunks of rows with two or more of them (the others were written by the split kernel): chunk s holds
// its normalised output o_s and lse_s (log2 units), so out = sum_s 2^lse_s o_s / sum_s 2^lse_s. grid (Hq, B,
// D / 64), 256 threads: a CTA merges 64 columns of one (row, head) (4 CTAs a head: a batch-1 merge of 64 chunks
// reads 64 KB a head from L2, too much for one SM to fetch quickly); 16 groups of 16 lanes take every 16th chunk
// with a running max (one pass: the loads of lse_s and o_s do not wait for a global max), a lane 4 columns; then
// the 16 groups merge in shared memory.
template <typename T, int D>
__global__ void __launch_bounds__(256) decode_attention_combine(
    const float* __restrict__ ws_o, const float* __restrict__ ws_lse, const void* __restrict__ lengths, int len64,
    T* __restrict__ out, int S, int Hq, int splits, int all_chunks) {
    constexpr int G = 16, C = 64;  // chunk groups, columns per CTA
    static_assert(D % C == 0, "combine: D a multiple of 64");
    __shared__ float part[G][C];
    __shared__ float wm[G], wl[G];
    const int h = blockIdx.x, b = blockIdx.y, c0 = blockIdx.z * C, tid = threadIdx.x;
    allow_dependent_launch();  // the next decode step's split kernel may be scheduled (it waits for this grid)
    wait_for_primary_grid();
    // all_chunks: every chunk's partial is there (an empty one with lse = -inf), so the lengths are not read and
    // the partials' loads start at once; else only rows of two or more chunks are merged here
    const int n = all_chunks ? splits : active_chunks(row_length(lengths, len64, b, S), splits);
    if (n < 2) return;
    const size_t bh = (size_t)b * Hq + h;
    const int grp = tid >> 4, col = (tid & 15) * 4;
    float m = f32_neg_inf(), l = 0.f, acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 4  // 64 chunks (B = 1): all of a group's loads in flight at once
    for (int s = grp; s < n; s += G) {
        const float e = __ldcg(ws_lse + bh * splits + s);
        const float4 x = __ldcg(reinterpret_cast<const float4*>(ws_o + (bh * splits + s) * D + c0 + col));
        if (e == f32_neg_inf()) continue;  // a chunk with no slot (all_chunks): its o was never written
        if (e > m) {  // a new running max: rescale what this group has so far (m = -inf at first: factor 0)
            const float f = ex2(m - e);
            l *= f;
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[i] *= f;
            m = e;
        }
        const float w = ex2(e - m);
        l += w;
        acc[0] += w * x.x; acc[1] += w * x.y; acc[2] += w * x.z; acc[3] += w * x.w;
    }
    // a group with no chunk (n < 16) keeps m = -inf, l = 0, acc = 0: weight 0 below
#pragma unroll
    for (int i = 0; i < 4; ++i) part[grp][col + i] = acc[i];
    if ((tid & 15) == 0) { wm[grp] = m; wl[grp] = l; }
    __syncthreads();
    if (tid >= C) return;
    float mx = wm[0];
#pragma unroll
    for (int i = 1; i < G; ++i) mx = fmaxf(mx, wm[i]);  // finite unless the row is empty (all_chunks)
    float v = 0.f, den = 0.f;
#pragma unroll
    for (int i = 0; i < G; ++i) {
        const float f = ex2(wm[i] - mx);
        den += f * wl[i];
        v += f * part[i][tid];
    }
    out[bh * D + c0 + tid] = from_f<T>(den > 0.f ? v / den : 0.f);  // den 0 (or NaN): an empty row (all_chunks)
}

// k, v [T, Hkv, D] contiguous -> k_cache, v_cache [B, S, Hkv, D] (row stride sb, slot stride ss, in elements; each
// slot's Hkv * D elements contiguous). grid T, threads stride over 2 * Hkv * D / VEC vectors (k then v).
template <typename T, int VEC>
__global__ void __launch_bounds__(256) kv_cache_append_kernel(
    const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ kc, T* __restrict__ vc,
    long long k_sb, long long k_ss, long long v_sb, long long v_ss,
    const void* __restrict__ cu, int cu64, const void* __restrict__ lengths, int len64, int B, int S, int row) {
    const int t = blockIdx.x;
    int lo = 0, hi = B - 1;  // the last row b with cu[b] <= t (empty rows before it are skipped)
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (index_at(cu, cu64, mid) <= t) lo = mid; else hi = mid - 1;
    }
    const long long slot = index_at(lengths, len64, lo) + (t - index_at(cu, cu64, lo));
    if (slot < 0 || slot >= S) return;  // overflow: dropped, never written out of bounds
    const int nvec = row / VEC;
    for (int i = threadIdx.x; i < 2 * nvec; i += blockDim.x) {
        const bool is_v = i >= nvec;
        const int e = (is_v ? i - nvec : i) * VEC;
        const T* src = (is_v ? v : k) + (size_t)t * row + e;
        T* dst = is_v ? vc + lo * v_sb + slot * v_ss + e : kc + lo * k_sb + slot * k_ss + e;
        *reinterpret_cast<Vec<T, VEC>*>(dst) = *reinterpret_cast<const Vec<T, VEC>*>(src);
    }
}

}  // namespace decode_attention
