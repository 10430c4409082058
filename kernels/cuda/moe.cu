// Mixture of experts (reference/moe.py): router top-k, routing metadata, the routed SwiGLU experts.
//
//   topk_kernel        one warp per token: softmax over E <= 512 logits, the k <= 32 largest (ranked by logit,
//                      equal logits: lower index first; NaN first, as torch.sort), weights renormalised over the k
//   route_kernel       one CTA: tokens per expert -> offsets[E+1], the stable permutation grouping the token-slots
//                      by expert (perm[pos] = slot, inv[slot] = pos), the non-empty experts in ascending order
//   gate_up_kernel     act[slot, i] = silu(G_e x_t)_i * (U_e x_t)_i for the slots of one expert per CTA, reading
//                      that expert's rows once for all its tokens (decode: only the routed experts are read)
//   down_kernel        out[t, h] = sum_j w[t, j] * down[e_j][h, :] . act[t k + j, :]  (down + weighted combine,
//                      + the sigmoid-gated shared expert when given)
//   gather_kernel      xs[pos] = x[perm[pos] / k]           (the grouped-GEMM path's input, grouped by expert)
//   combine_kernel     out[t] = sum_j w[t, j] * y[inv[t k + j]] (+ sigmoid(g_t) shared[t]): the grouped-GEMM
//                      path's output back in token order
//   gate_up_mma_kernel, down_mma_kernel: the decode path for up to 8 tokens on the tensor cores (below)
// Experts are int64 (moe_topk's output), weights fp32; every sum is fp32, one rounding on store.
// Slots whose expert lies outside [0, E) are dropped (contribute nothing; the wrapper's validate= checks them).
#include "include/convert.cuh"
#include "include/mbarrier.cuh"
#include "include/mma_sm80.cuh"
#include "include/ptx.cuh"
#include "include/reduce.cuh"

using namespace qkern;

namespace moe {

constexpr int WARPS = 8;        // warps per CTA of the expert kernels
constexpr int PAIRS = 2;        // gate/up row pairs per warp in gate_up_kernel
constexpr int ROUTE_THREADS = 1024;


// ------------------------------------------------------------------------------------------------ top-k
// A logit's rank key: larger logit, larger key; -0 and +0 equal (they compare equal as fp32); NaN above +inf (as
// torch.sort ranks it). The key 0 lies below every logit's (-inf's is 0x007fffff): it marks a taken or absent one.
__device__ __forceinline__ unsigned rank_key(float v) {
    if (v != v) return 0xffffffffu;
    const unsigned u = v == 0.f ? 0u : __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_logit(unsigned key) {
    if (key == 0xffffffffu) return f32_nan();
    return __uint_as_float((key & 0x80000000u) ? (key ^ 0x80000000u) : ~key);
}
__device__ __forceinline__ unsigned warp_max_u32(unsigned v) {  // redux.sync (sm_80): one instruction
    unsigned r;
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;\n" : "=r"(r) : "r"(v));
    return r;
}

// One warp, one token: NPL logits per lane (expert e = lane + 32 i, read through ld(e) as fp32), each held as
// (rank key << 32) | ~e, so that one unsigned order ranks by logit and, among equal logits, the lower index
// first. Each of the k rounds: every lane's largest entry (a tree over its registers), the warp's largest key and
// then, among the lanes holding it, the largest low word (the lowest index), both by redux.sync; the owner lane
// clears that entry. Lane j < k writes the j-th weight/expert.
template <int NPL, typename Load>
__device__ __forceinline__ void topk_warp(Load ld, int E, int k, float* __restrict__ weights,
                                          long long* __restrict__ experts) {
    const int lane = threadIdx.x & 31;
    unsigned long long c[NPL];
#pragma unroll
    for (int i = 0; i < NPL; ++i) {
        const int e = lane + 32 * i;
        c[i] = e < E ? ((unsigned long long)rank_key(ld(e)) << 32) | (0xffffffffu - (unsigned)e) : 0ull;
    }
    float my_v = 0.f, top = 0.f;
    int my_e = 0;
    for (int j = 0; j < k; ++j) {
        unsigned long long t[NPL];
#pragma unroll
        for (int i = 0; i < NPL; ++i) t[i] = c[i];
#pragma unroll
        for (int s = 1; s < NPL; s <<= 1)
#pragma unroll
            for (int i = 0; i + s < NPL; i += 2 * s) t[i] = t[i] > t[i + s] ? t[i] : t[i + s];
        const unsigned hi = warp_max_u32((unsigned)(t[0] >> 32));
        const unsigned lo = warp_max_u32((unsigned)(t[0] >> 32) == hi ? (unsigned)t[0] : 0u);
        const int be = (int)(0xffffffffu - lo);
        const float bv = key_logit(hi);
        if ((be & 31) == lane)
#pragma unroll
            for (int i = 0; i < NPL; ++i)
                if (i == (be >> 5)) c[i] = 0ull;
        if (j == 0) top = bv;
        if (lane == j) {
            my_v = bv;
            my_e = be;
        }
    }
    // renormalised top-k of the softmax = softmax over the k kept logits (the full denominator cancels)
    const float p = lane < k ? expf(my_v - top) : 0.f;
    const float s = warp_sum(p);
    if (lane < k) {
        weights[lane] = p / s;
        experts[lane] = my_e;
    }
}

template <typename T, int NPL>
__global__ void __launch_bounds__(128) topk_kernel(const T* __restrict__ logits, float* __restrict__ weights,
                                                   long long* __restrict__ experts, int T_, int E, int k,
                                                   int early) {
    // the gate/up kernel may be scheduled now (it waits for this grid to finish); early: before this grid's own
    // wait, so the gate/up kernel's routing-free loads (the shared expert's rows) stream while the router GEMM runs
    if (early) allow_dependent_launch();
    wait_for_primary_grid();   // launched programmatically: the logits (the router GEMM) are complete
    if (!early) allow_dependent_launch();
    const int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t >= T_) return;
    const T* row = logits + (size_t)t * E;
    topk_warp<NPL>([&](int e) { return to_f(row[e]); }, E, k, weights + (size_t)t * k, experts + (size_t)t * k);
}

// The router GEMM and its top-k in one launch: grid = ceil(E / WARPS); warp w of CTA b computes expert
// e = b WARPS + w's fp32 logit for every token (the row of router_weight read once, x rows from L1/L2) into
// scratch[t][e]; the last CTA to finish (a ticket counter, reset by it for the next call) runs the top-k of every
// token, one warp per token.
template <typename T, int VEC, int TMAX, int NPL>
__global__ void __launch_bounds__(WARPS * 32) router_topk_kernel(const T* __restrict__ x, const T* __restrict__ wr,
                                                                 int T_, int H, int E, int k,
                                                                 float* __restrict__ scratch,
                                                                 unsigned* __restrict__ ticket,
                                                                 float* __restrict__ weights,
                                                                 long long* __restrict__ experts) {
    allow_dependent_launch();  // the gate/up kernel may be scheduled now (it waits for this grid to finish)
    __shared__ bool last;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int e = blockIdx.x * WARPS + warp;
    if (e < E) {
        const T* row = wr + (size_t)e * H;
        const int nvec = H / VEC;
        for (int t0 = 0; t0 < T_; t0 += TMAX) {
            float acc[TMAX];
#pragma unroll
            for (int t = 0; t < TMAX; ++t) acc[t] = 0.f;
#pragma unroll 8
            for (int q = lane; q < nvec; q += 32) {  // unrolled: the row's loads are all in flight at once
                const Vec<T, VEC> w = reinterpret_cast<const Vec<T, VEC>*>(row)[q];
#pragma unroll
                for (int t = 0; t < TMAX; ++t) {
                    if (t0 + t < T_) {
                        const Vec<T, VEC> xv = reinterpret_cast<const Vec<T, VEC>*>(x + (size_t)(t0 + t) * H)[q];
#pragma unroll
                        for (int c = 0; c < VEC; ++c) acc[t] = fmaf(to_f(w.v[c]), to_f(xv.v[c]), acc[t]);
                    }
                }
            }
#pragma unroll
            for (int t = 0; t < TMAX; ++t) {
                const float v = warp_sum(acc[t]);
                if (lane == 0 && t0 + t < T_) scratch[(size_t)(t0 + t) * E + e] = v;
            }
        }
    }
    __threadfence();  // this CTA's logits are visible before its ticket
    __syncthreads();
    if (tid == 0) last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int t = warp; t < T_; t += WARPS) {
        const float* row = scratch + (size_t)t * E;
        topk_warp<NPL>([&](int i) { return __ldcg(row + i); }, E, k, weights + (size_t)t * k, experts + (size_t)t * k);
    }
    if (tid == 0) *ticket = 0u;  // ready for the next call (and the next replay of a captured graph)
}

// ------------------------------------------------------------------------------------------------ routing
// One CTA of ROUTE_THREADS. Warp w owns the contiguous slot range [w chunk, (w + 1) chunk); hist[w][e] counts its
// slots per expert (pass 1), becomes the warp's base inside expert e's group (pass 2), and places its slots in slot
// order (pass 3): a stable, deterministic counting sort. Shared: hist[W][E] ints + cnt[E] + off[E] + 65 ints.
__device__ __forceinline__ int expert_of(const long long* __restrict__ experts, int s, int E) {
    const long long e = experts[s];
    return (e >= 0 && e < E) ? (int)e : -1;
}

__global__ void __launch_bounds__(ROUTE_THREADS) route_kernel(const long long* __restrict__ experts, int n_slots,
                                                             int E, int* __restrict__ offsets,
                                                             int* __restrict__ perm, int* __restrict__ inv,
                                                             int* __restrict__ active) {
    extern __shared__ int sh[];
    constexpr int W = ROUTE_THREADS / 32;
    int* hist = sh;             // [W][E]
    int* cnt = hist + W * E;    // [E] tokens per expert
    int* off = cnt + E;         // [E] start of each expert's group
    int* wsum = off + E;        // [32] scan scratch (counts)
    int* wact = wsum + 33;      // [32] scan scratch (non-empty experts); wsum[32]: their number
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int chunk = (n_slots + W - 1) / W;
    const int lo = min(n_slots, w * chunk), hi = min(n_slots, lo + chunk);
    for (int i = tid; i < W * E; i += ROUTE_THREADS) hist[i] = 0;
    __syncthreads();
    // pass 1: per-warp histograms (the lowest lane of each group of equal experts adds the group's size); the
    // experts are loaded BATCH x 32 at a time so the loads overlap
    constexpr int BATCH = 4;
    for (int b0 = lo; b0 < hi; b0 += 32 * BATCH) {
        int eb[BATCH];
#pragma unroll
        for (int u = 0; u < BATCH; ++u) {
            const int s = b0 + 32 * u + lane;
            eb[u] = s < hi ? expert_of(experts, s, E) : -1;
        }
#pragma unroll
        for (int u = 0; u < BATCH; ++u) {
            const int s = b0 + 32 * u + lane;
            const unsigned valid = __ballot_sync(0xffffffffu, s < hi);
            const int e = eb[u];
            const unsigned peers = __match_any_sync(0xffffffffu, e) & valid;
            if (s < hi && e >= 0 && (__ffs(peers) - 1) == lane) hist[w * E + e] += __popc(peers);
            __syncwarp();
        }
    }
    __syncthreads();
    // pass 2: per expert, the warps' bases (exclusive over warps) and the total
    for (int e = tid; e < E; e += ROUTE_THREADS) {
        int run = 0;
        for (int v = 0; v < W; ++v) {
            const int c = hist[v * E + e];
            hist[v * E + e] = run;
            run += c;
        }
        cnt[e] = run;
    }
    __syncthreads();
    // exclusive scans over experts of the counts (-> offsets) and of "non-empty" (-> the active list), E <= 1024
    {
        const int e = tid;
        const int c = e < E ? cnt[e] : 0, a = (e < E && c > 0) ? 1 : 0;
        int ic = c, ia = a;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int uc = __shfl_up_sync(0xffffffffu, ic, o), ua = __shfl_up_sync(0xffffffffu, ia, o);
            if (lane >= o) {
                ic += uc;
                ia += ua;
            }
        }
        if (lane == 31) {
            wsum[w] = ic;
            wact[w] = ia;
        }
        __syncthreads();
        if (w == 0) {
            int xc = wsum[lane], xa = wact[lane];
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const int uc = __shfl_up_sync(0xffffffffu, xc, o), ua = __shfl_up_sync(0xffffffffu, xa, o);
                if (lane >= o) {
                    xc += uc;
                    xa += ua;
                }
            }
            wsum[lane] = xc - wsum[lane];  // exclusive prefix of the warps' totals
            wact[lane] = xa - wact[lane];
        }
        __syncthreads();
        if (e < E) {
            const int start = wsum[w] + ic - c;
            off[e] = start;
            offsets[e] = start;
            if (e == E - 1) {
                offsets[E] = start + c;
                wsum[32] = wact[w] + ia;  // the number of non-empty experts
            }
            if (a) active[wact[w] + ia - a] = e;  // rank = non-empty experts before e
        }
        __syncthreads();
        // the tail of the active list: -1 (the expert kernels' CTAs past the last non-empty expert exit)
        for (int i = wsum[32] + tid; i < E; i += ROUTE_THREADS) active[i] = -1;
    }
    // pass 3: place the warp's slots in slot order
    for (int b0 = lo; b0 < hi; b0 += 32 * BATCH) {
        int eb[BATCH];
#pragma unroll
        for (int u = 0; u < BATCH; ++u) {
            const int s = b0 + 32 * u + lane;
            eb[u] = s < hi ? expert_of(experts, s, E) : -1;
        }
#pragma unroll
        for (int u = 0; u < BATCH; ++u) {
            const int s = b0 + 32 * u + lane;
            const unsigned valid = __ballot_sync(0xffffffffu, s < hi);
            const int e = eb[u];
            const unsigned peers = __match_any_sync(0xffffffffu, e) & valid;
            const int base = (s < hi && e >= 0) ? off[e] + hist[w * E + e] : 0;
            __syncwarp();  // every lane has read its group's base before the leader moves it on
            if (s < hi) {
                if (e >= 0) {
                    const int pos = base + __popc(peers & ((1u << lane) - 1u));
                    perm[pos] = s;
                    inv[s] = pos;
                    if ((__ffs(peers) - 1) == lane) hist[w * E + e] += __popc(peers);
                } else {
                    inv[s] = -1;
                }
            }
            __syncwarp();
        }
    }
}

// ------------------------------------------------------------------------------------------------ gate/up
// M token rows (in shared memory, xs[M][H]) against PAIRS gate/up row pairs per warp; lane-strided 16-byte chunks
// of the weight rows, UNROLL chunks per step with all loads issued first. Results reduced over the warp; the
// lanes then write act for (pair, token).
// Rows i of wgate and wup ([width, H] each) against the chunk's token rows; writes out[ids[j] * width + i].
template <typename T, int VEC, int M, bool LEAN = false>
__device__ __forceinline__ void gate_up_chunk(const T* __restrict__ wgate, const T* __restrict__ wup,
                                              const T* __restrict__ xs, int H, int I, int i0, int m,
                                              const int* __restrict__ slots, float* __restrict__ act) {
    constexpr int ROWS = 2 * PAIRS;  // gate row i, up row i, for each pair
    // the batch-1 build (LEAN) keeps fewer loads in flight per lane so that two CTAs fit an SM (128 registers)
    constexpr int UNROLL = VEC > 1 ? (LEAN ? 2 : 4) : 8;
    const int lane = threadIdx.x & 31;
    float acc[ROWS][M];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int j = 0; j < M; ++j) acc[r][j] = 0.f;
    const T* rows[ROWS];
#pragma unroll
    for (int p = 0; p < PAIRS; ++p) {
        const int i = min(i0 + p, I - 1);  // a pair past I recomputes row I - 1 and is not written
        rows[2 * p] = wgate + (size_t)i * H;
        rows[2 * p + 1] = wup + (size_t)i * H;
    }
    const int nvec = H / VEC;
    for (int q0 = lane; q0 < nvec; q0 += 32 * UNROLL) {
        Vec<T, VEC> wv[UNROLL][ROWS];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int q = q0 + 32 * u;
            if (q < nvec) {
#pragma unroll
                for (int r = 0; r < ROWS; ++r) wv[u][r] = reinterpret_cast<const Vec<T, VEC>*>(rows[r])[q];
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int q = q0 + 32 * u;
            if (q < nvec) {
#pragma unroll
                for (int j = 0; j < M; ++j) {
                    const Vec<T, VEC> xv = reinterpret_cast<const Vec<T, VEC>*>(xs + (size_t)j * H)[q];
                    float xf[VEC];
#pragma unroll
                    for (int c = 0; c < VEC; ++c) xf[c] = to_f(xv.v[c]);
#pragma unroll
                    for (int r = 0; r < ROWS; ++r)
#pragma unroll
                        for (int c = 0; c < VEC; ++c) acc[r][j] = fmaf(to_f(wv[u][r].v[c]), xf[c], acc[r][j]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int j = 0; j < M; ++j) acc[r][j] = warp_sum(acc[r][j]);
    // every lane holds every sum; lane (p, j) writes one
#pragma unroll
    for (int p = 0; p < PAIRS; ++p)
#pragma unroll
        for (int j = 0; j < M; ++j) {
            if (lane == p * M + j && j < m && i0 + p < I) {
                const float g = acc[2 * p][j], u = acc[2 * p + 1][j];
                act[(size_t)slots[j] * I + i0 + p] = g / (1.f + expf(-g)) * u;
            }
        }
}

// grid = (units (+1 with the shared expert), ceil(max(I, S) / (WARPS PAIRS))); unit u is one expert and its slots:
//   ROUTED=false (decode): u is a slot; the CTA exits unless it is its expert's first slot, and takes every later
//                          slot of that expert (found by scanning experts[], n_slots small)
//   ROUTED=true:           u indexes the non-empty experts (active[u], -1 past the last), slots from perm/offsets
//   the shared expert (sh_gate non-null): the last unit, all T_ tokens, rows of sh_gate / sh_up [S, H] -> act_sh
// Token rows are staged in shared memory mt <= MMAX at a time (mt * H elements, chosen by the host to fit); MMAX = 1
// (batch-1 decode) and 2 (small batches: an expert rarely gets more than 2 of a few tokens, more go in chunks of 2)
// build only the small chunks (fewer registers: two CTAs per SM).
template <typename T, int VEC, bool ROUTED, int MMAX>
__global__ void __launch_bounds__(WARPS * 32, MMAX <= 2 ? 2 : 1) gate_up_kernel(const T* __restrict__ x, const T* __restrict__ gate_up,
                                                             const long long* __restrict__ experts, int n_slots,
                                                             int k, int H, int I, int E,
                                                             const int* __restrict__ perm,
                                                             const int* __restrict__ offsets,
                                                             const int* __restrict__ active, int mt,
                                                             float* __restrict__ act, const T* __restrict__ sh_gate,
                                                             const T* __restrict__ sh_up, int S, int T_,
                                                             float* __restrict__ act_sh) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* xs = reinterpret_cast<T*>(smem_raw);
    __shared__ int list[128];   // decode: the expert's slots (n_slots <= 128)
    __shared__ int chunk_slots[8];
    __shared__ int info[3];     // expert, first, count
    wait_for_primary_grid();   // the routing (top-k or route kernel) is complete and visible
    allow_dependent_launch();  // the down kernel may be scheduled (it prefetches its rows, then waits for this grid)
    const int tid = threadIdx.x;
    const int u = blockIdx.x;
    const bool shared_unit = sh_gate != nullptr && u == gridDim.x - 1;  // the last unit: the shared expert
    if (shared_unit) {
        if (tid == 0) {
            info[0] = 0;
            info[1] = 0;
            info[2] = T_;
        }
    } else if (ROUTED) {
        if (tid == 0) {
            const int e = active[u];
            info[0] = e;
            info[1] = e >= 0 ? offsets[e] : 0;
            info[2] = e >= 0 ? offsets[e + 1] - info[1] : 0;
        }
    } else if (tid < 32) {
        // warp 0: expert e of slot u; the CTA works only if u is e's first slot, and then takes e's slots >= u
        const int e = expert_of(experts, u, E);
        int n = 0;
        bool first_slot = e >= 0;
        for (int s0 = 0; s0 < n_slots && first_slot; s0 += 32) {
            const int s = s0 + tid;
            const bool same = s < n_slots && experts[s] == e;
            const unsigned b = __ballot_sync(0xffffffffu, same);
            const unsigned before = __ballot_sync(0xffffffffu, same && s < u);
            if (before) {
                first_slot = false;
            } else {
                if (same) list[n + __popc(b & ((1u << tid) - 1u))] = s;
                n += __popc(b);
            }
        }
        if (tid == 0) {
            info[0] = first_slot ? e : -1;
            info[1] = 0;
            info[2] = n;
        }
    }
    __syncthreads();
    const int e = info[0];
    if (e < 0) return;
    const int count = info[2];
    const int first = info[1];
    const int warp = tid >> 5;
    const int i0 = (blockIdx.y * WARPS + warp) * PAIRS;
    // routed expert e: rows of gate_up[e], act by slot, x row slot / k; the shared expert: its own rows, act_sh by
    // token, x row = token
    const T* wgate = shared_unit ? sh_gate : gate_up + (size_t)e * 2 * I * H;
    const T* wup = shared_unit ? sh_up : wgate + (size_t)I * H;
    const int width = shared_unit ? S : I;
    float* dst = shared_unit ? act_sh : act;
    const int xdiv = shared_unit ? 1 : k;
    for (int c0 = 0; c0 < count; c0 += mt) {
        const int m = min(mt, count - c0);
        __syncthreads();  // the previous chunk's rows are no longer read
        if (tid < m) chunk_slots[tid] = shared_unit ? c0 + tid : ROUTED ? perm[first + c0 + tid] : list[c0 + tid];
        __syncthreads();
        const int nvec = H / VEC;
        for (int idx = tid; idx < m * nvec; idx += WARPS * 32) {
            const int j = idx / nvec, q = idx - j * nvec;
            reinterpret_cast<Vec<T, VEC>*>(xs + (size_t)j * H)[q] =
                reinterpret_cast<const Vec<T, VEC>*>(x + (size_t)(chunk_slots[j] / xdiv) * H)[q];
        }
        __syncthreads();
        // each warp walks its row pairs (grid.y CTAs per unit, chosen by the host to fill the card)
        for (int r0 = i0; r0 < width; r0 += gridDim.y * WARPS * PAIRS) {
            constexpr bool LEAN = MMAX <= 2;
            if (MMAX == 1 || m == 1) gate_up_chunk<T, VEC, 1, LEAN>(wgate, wup, xs, H, width, r0, m, chunk_slots, dst);
            else if (MMAX == 2 || m == 2) gate_up_chunk<T, VEC, 2, LEAN>(wgate, wup, xs, H, width, r0, m, chunk_slots, dst);
            else if (m <= 4) gate_up_chunk<T, VEC, 4>(wgate, wup, xs, H, width, r0, m, chunk_slots, dst);
            else gate_up_chunk<T, VEC, 8>(wgate, wup, xs, H, width, r0, m, chunk_slots, dst);
        }
    }
}

// gate_up_split_kernel's loads: vector q0 + WARPS * 32 * n (n < NQ) of gate rows i0..i0+R-1 and the same up rows
template <typename T, int VEC, int R, int NQ>
__device__ __forceinline__ void split_load_rows(Vec<T, VEC> (&wv)[2 * R][NQ], const T* __restrict__ wgate,
                                                const T* __restrict__ wup, int H, int width, int i0, int q0,
                                                int nvec) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int i = min(i0 + r, width - 1);  // a row past the width recomputes the last and is not written
#pragma unroll
        for (int n = 0; n < NQ; ++n) {
            const int q = q0 + WARPS * 32 * n;
            if (q < nvec) {
                wv[2 * r][n] = reinterpret_cast<const Vec<T, VEC>*>(wgate + (size_t)i * H)[q];
                wv[2 * r + 1][n] = reinterpret_cast<const Vec<T, VEC>*>(wup + (size_t)i * H)[q];
            }
        }
    }
}

constexpr int SPLIT_AHEAD = 2;  // gate_up_split_kernel: row blocks of a CTA prefetched into L2 ahead of the current

// L2 prefetches of this thread's share of gate/up rows i0..i0+R-1 (one per 128-byte line): the next row block of a
// CTA streams from memory while it reduces the current one.
template <typename T, int VEC, int R>
__device__ __forceinline__ void split_prefetch_rows(const T* __restrict__ wgate, const T* __restrict__ wup, int H,
                                                    int width, int i0, int nvec) {
    constexpr int PER_LINE = 128 / (VEC * (int)sizeof(T)) > 0 ? 128 / (VEC * (int)sizeof(T)) : 1;
    if (i0 >= width) return;
    for (int q = threadIdx.x * PER_LINE; q < nvec; q += WARPS * 32 * PER_LINE)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int i = min(i0 + r, width - 1);
            prefetch_l2(wgate + (size_t)i * H + (size_t)q * VEC);
            prefetch_l2(wup + (size_t)i * H + (size_t)q * VEC);
        }
}

// The decode gate/up kernel, split over H (what 1..16 tokens run): grid = (n_slots (+1 with the shared expert), G);
// CTA (u, g) walks the row blocks b = g, g + G, ... of unit u's expert, a block being the R gate rows
// i0 = b R .. i0+R-1 and the same R up rows. Each warp takes a contiguous stretch of every row (lane-strided 16-byte
// vectors), so a block's 2R rows are loaded with all their loads in flight at once; the CTA's next SPLIT_AHEAD
// blocks are prefetched into L2 meanwhile; x comes from L1/L2 in the same vector layout. Per-warp partial sums are reduced
// across the warps in shared memory; MT tokens per reduction.
// Unit u < n_slots is slot u: the CTA reads its expert, issues the weight loads, then (while they are in flight)
// finds the expert's slots and exits unless u is the first of them (an expert's rows are read by one unit).
// The shared expert's unit (sh_gate non-null, the last) does not depend on the routing: its CTAs issue their first
// weight loads before waiting for the previous kernel (they stream while the router runs); x is read after it.
template <typename T, int VEC, int R, int MT, int NQ>
__global__ void __launch_bounds__(WARPS * 32, 2) gate_up_split_kernel(
        const T* __restrict__ x, const T* __restrict__ gate_up, const long long* __restrict__ experts, int n_slots,
        int k, int H, int I, int E, float* __restrict__ act, const T* __restrict__ sh_gate,
        const T* __restrict__ sh_up, int S, int T_, float* __restrict__ act_sh) {
    __shared__ int list[128];   // the expert's slots (n_slots <= 128)
    __shared__ int info[2];     // first-slot flag, count
    __shared__ float red[WARPS][2 * R * MT];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int u = blockIdx.x;
    const bool shared_unit = sh_gate != nullptr && u == gridDim.x - 1;
    const int width = shared_unit ? S : I;
    const int nblocks = (width + R - 1) / R;
    if ((int)blockIdx.y >= nblocks) return;
    int e = 0;
    if (!shared_unit) {
        wait_for_primary_grid();  // the routing (top-k) is complete and visible
        // the down kernel may be scheduled now (it reads the experts before its own wait: only after the routing)
        allow_dependent_launch();
        e = expert_of(experts, u, E);
        if (e < 0) return;
    }
    const T* wgate = shared_unit ? sh_gate : gate_up + (size_t)e * 2 * I * H;
    const T* wup = shared_unit ? sh_up : wgate + (size_t)I * H;
    const int nvec = H / VEC;
    constexpr int STRIDE = WARPS * 32;  // this thread's vectors of a row: q = tid + STRIDE n (n < NQ per pass)
    // the first block's weights, loaded before anything else; the CTA's second block prefetched into L2
    Vec<T, VEC> wv[2 * R][NQ];
    split_load_rows<T, VEC, R, NQ>(wv, wgate, wup, H, width, blockIdx.y * R, tid, nvec);
#pragma unroll
    for (int d = 1; d <= SPLIT_AHEAD; ++d)
        split_prefetch_rows<T, VEC, R>(wgate, wup, H, width, (blockIdx.y + d * gridDim.y) * R, nvec);
    int count;
    if (shared_unit) {
        wait_for_primary_grid();  // x and the outputs' memory: only once the previous kernel is done
        allow_dependent_launch();
        count = T_;
    } else {
        if (warp == 0) {  // the expert's slots; the CTA works only if u is the first
            int n = 0;
            bool first_slot = true;
            for (int s0 = 0; s0 < n_slots && first_slot; s0 += 32) {
                const int s = s0 + lane;
                const bool same = s < n_slots && experts[s] == e;
                const unsigned b = __ballot_sync(0xffffffffu, same);
                if (__ballot_sync(0xffffffffu, same && s < u)) {
                    first_slot = false;
                } else {
                    if (same) list[n + __popc(b & ((1u << lane) - 1u))] = s;
                    n += __popc(b);
                }
            }
            if (lane == 0) {
                info[0] = first_slot;
                info[1] = n;
            }
        }
        __syncthreads();
        if (!info[0]) return;
        count = info[1];
    }
    float* dst = shared_unit ? act_sh : act;
    const int xdiv = shared_unit ? 1 : k;
    for (int blk = blockIdx.y; blk < nblocks; blk += gridDim.y) {
        const int i0 = blk * R;
        if (blk != (int)blockIdx.y) {  // this block's rows (from L2: prefetched), SPLIT_AHEAD blocks on prefetched
            split_load_rows<T, VEC, R, NQ>(wv, wgate, wup, H, width, i0, tid, nvec);
            split_prefetch_rows<T, VEC, R>(wgate, wup, H, width, (blk + SPLIT_AHEAD * gridDim.y) * R, nvec);
        }
        for (int c0 = 0; c0 < count; c0 += MT) {
            float acc[2 * R][MT];
#pragma unroll
            for (int r = 0; r < 2 * R; ++r)
#pragma unroll
                for (int j = 0; j < MT; ++j) acc[r][j] = 0.f;
            int xrow[MT];
#pragma unroll
            for (int j = 0; j < MT; ++j) {
                const int c = min(c0 + j, count - 1);
                xrow[j] = (shared_unit ? c : list[c]) / xdiv;
            }
            for (int q0 = 0; q0 < nvec; q0 += STRIDE * NQ) {
                if (q0 > 0)  // H beyond one pass: the next stretch of the rows
                    split_load_rows<T, VEC, R, NQ>(wv, wgate, wup, H, width, i0, q0 + tid, nvec);
#pragma unroll
                for (int n = 0; n < NQ; ++n) {
                    const int q = q0 + tid + STRIDE * n;
                    if (q < nvec) {
#pragma unroll
                        for (int j = 0; j < MT; ++j) {
                            const Vec<T, VEC> xv = reinterpret_cast<const Vec<T, VEC>*>(x + (size_t)xrow[j] * H)[q];
                            float xf[VEC];
#pragma unroll
                            for (int c = 0; c < VEC; ++c) xf[c] = to_f(xv.v[c]);
#pragma unroll
                            for (int r = 0; r < 2 * R; ++r)
#pragma unroll
                                for (int c = 0; c < VEC; ++c) acc[r][j] = fmaf(to_f(wv[r][n].v[c]), xf[c], acc[r][j]);
                        }
                    }
                }
            }
            if (nvec > STRIDE * NQ && c0 + MT < count)  // the next token chunk starts from the first pass
                split_load_rows<T, VEC, R, NQ>(wv, wgate, wup, H, width, i0, tid, nvec);
#pragma unroll
            for (int r = 0; r < 2 * R; ++r)
#pragma unroll
                for (int j = 0; j < MT; ++j) {
                    const float v = warp_sum(acc[r][j]);
                    if (lane == 0) red[warp][r * MT + j] = v;
                }
            __syncthreads();
            if (tid < R * MT) {
                const int r = tid / MT, j = tid - r * MT;
                if (i0 + r < width && c0 + j < count) {
                    float g = 0.f, up = 0.f;
#pragma unroll
                    for (int w = 0; w < WARPS; ++w) {
                        g += red[w][2 * r * MT + j];
                        up += red[w][(2 * r + 1) * MT + j];
                    }
                    const int slot = shared_unit ? c0 + j : list[c0 + j];
                    dst[(size_t)slot * width + i0 + r] = g / (1.f + expf(-g)) * up;
                }
            }
            __syncthreads();  // red is reused by the next chunk
        }
    }
}

// ------------------------------------------------------------------------------------------------ down + combine
// One output row h: the k routed rows (and the shared expert's) against the staged activations.
template <typename T, int VEC>
__device__ __forceinline__ void down_row(const float* __restrict__ a_s, const T* __restrict__ down,
                                         const int* __restrict__ e_s, int k, int H, int I, int h,
                                         const T* __restrict__ sh_down, int S, T* __restrict__ out_t) {
    const int lane = threadIdx.x & 31;
    constexpr int UNROLL = VEC > 1 ? 6 : 8;  // 16-byte vectors: 16 a lane for the routed rows at 35B-A3B, 3 steps
    const int per = I / VEC;      // vectors per row
    const int total = k * per;    // vectors over the k rows
    float acc = 0.f;
    for (int q0 = lane; q0 < total; q0 += 32 * UNROLL) {
        Vec<T, VEC> wv[UNROLL];
        int jq[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int q = q0 + 32 * u;
            jq[u] = -1;
            if (q < total) {
                const int j = q / per;
                const int e = e_s[j];
                if (e >= 0) {
                    jq[u] = q;
                    wv[u] = reinterpret_cast<const Vec<T, VEC>*>(down + ((size_t)e * H + h) * I)[q - j * per];
                }
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (jq[u] >= 0) {
                const float* a = a_s + (size_t)jq[u] * VEC;  // j * I + (q - j per) VEC == q VEC
#pragma unroll
                for (int c = 0; c < VEC; ++c) acc = fmaf(to_f(wv[u].v[c]), a[c], acc);
            }
        }
    }
    if (sh_down) {
        const int sper = S / VEC;
        const float* a0 = a_s + (size_t)k * I;
        for (int q0 = lane; q0 < sper; q0 += 32 * UNROLL) {
            Vec<T, VEC> wv[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u)
                if (q0 + 32 * u < sper) wv[u] = reinterpret_cast<const Vec<T, VEC>*>(sh_down + (size_t)h * S)[q0 + 32 * u];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                if (q0 + 32 * u < sper) {
                    const float* a = a0 + (size_t)(q0 + 32 * u) * VEC;
#pragma unroll
                    for (int c = 0; c < VEC; ++c) acc = fmaf(to_f(wv[u].v[c]), a[c], acc);
                }
            }
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) out_t[h] = from_f<T>(acc);
}

// grid = (T, row blocks); warps walk the output rows h of token t: the dot of the k concatenated rows
// down[e_j][h, :] with w_j act[t k + j, :] (staged scaled in shared memory, k * I floats), plus, with the shared
// expert (sh_down non-null), sh_down[h, :] . sigmoid(sh_gate_w . x[t]) act_sh[t, :] (S more floats).
// pdl-early: experts x sh_gate_w -- written two or more kernels back: the gate/up kernel before this one triggers only after its own wait
template <typename T, int VEC>
__global__ void __launch_bounds__(WARPS * 32, 2) down_kernel(const float* __restrict__ act, const T* __restrict__ down,
                                                          const float* __restrict__ weights,
                                                          const long long* __restrict__ experts, int k, int H,
                                                          int I, int E, T* __restrict__ out,
                                                          const float* __restrict__ act_sh,
                                                          const T* __restrict__ sh_down,
                                                          const T* __restrict__ sh_gate_w,
                                                          const T* __restrict__ x, int S) {
    extern __shared__ __align__(16) float a_s[];  // [k][I], then [S]
    __shared__ int e_s[32];
    __shared__ float red[WARPS];
    const int t = blockIdx.x, tid = threadIdx.x, lane = tid & 31;
    // Before the wait (with a programmatic launch this overlaps the gate/up kernel): the experts (the top-k grid
    // finished before the gate/up kernel let this one start), the shared gate, and the rows this warp will read,
    // prefetched into L2.
    if (tid < k) e_s[tid] = expert_of(experts, t * k + tid, E);
    __syncthreads();
    {
        const int lines = (I * (int)sizeof(T) + 127) / 128, slines = (S * (int)sizeof(T) + 127) / 128;
        for (int h = blockIdx.y * WARPS + (tid >> 5); h < H; h += gridDim.y * WARPS) {
            for (int q = lane; q < k * lines; q += 32) {
                const int j = q / lines, e = e_s[j];
                if (e >= 0) prefetch_l2(reinterpret_cast<const char*>(down + ((size_t)e * H + h) * I) + (q - j * lines) * 128);
            }
            if (sh_down)
                for (int q = lane; q < slines; q += 32)
                    prefetch_l2(reinterpret_cast<const char*>(sh_down + (size_t)h * S) + q * 128);
        }
    }
    float sig = 0.f;
    if (sh_down) {  // the shared expert's gate: sigmoid(w . x[t]), a block reduction over H
        float p = 0.f;
        for (int c = tid; c < H; c += WARPS * 32) p = fmaf(to_f(sh_gate_w[c]), to_f(x[(size_t)t * H + c]), p);
        p = warp_sum(p);
        if (lane == 0) red[tid >> 5] = p;
    }
    __syncthreads();
    if (sh_down) {
        float g = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) g += red[w];
        sig = 1.f / (1.f + expf(-g));
    }
    wait_for_primary_grid();  // the gate/up activations are complete and visible
    for (int idx = tid; idx < k * I; idx += WARPS * 32) {
        const int j = idx / I;
        const float wj = weights[(size_t)t * k + j];
        a_s[idx] = e_s[j] >= 0 ? wj * act[(size_t)t * k * I + idx] : 0.f;
    }
    if (sh_down)
        for (int i = tid; i < S; i += WARPS * 32) a_s[k * I + i] = sig * act_sh[(size_t)t * S + i];
    __syncthreads();
    for (int h = blockIdx.y * WARPS + (tid >> 5); h < H; h += gridDim.y * WARPS)
        down_row<T, VEC>(a_s, down, e_s, k, H, I, h, sh_down, S, out + (size_t)t * H);
}

// ------------------------------------------------------------------------------------------------ grouped path
// grid = (rows, ceil(H / (VEC blockDim))): rows (up to T k) on x, whose limit is 2^31 - 1
// Positions past *total (slots dropped for an out-of-range expert) get zeros.
template <typename T, int VEC>
__global__ void __launch_bounds__(256) gather_kernel(const T* __restrict__ x, const int* __restrict__ perm,
                                                     const int* __restrict__ total, int k, int H,
                                                     T* __restrict__ xs) {
    const int pos = blockIdx.x;
    const int q = blockIdx.y * blockDim.x + threadIdx.x;
    if (q * VEC >= H) return;
    Vec<T, VEC> v;
    if (pos < *total) {
        v = reinterpret_cast<const Vec<T, VEC>*>(x + (size_t)(perm[pos] / k) * H)[q];
    } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) v.v[i] = from_f<T>(0.f);
    }
    reinterpret_cast<Vec<T, VEC>*>(xs + (size_t)pos * H)[q] = v;
}

// With the shared expert (shared non-null): + sigmoid(gate_logit[t]) * shared[t] (its GEMMs' outputs).
template <typename T, int VEC>
__global__ void __launch_bounds__(256) combine_kernel(const T* __restrict__ y, const int* __restrict__ inv,
                                                      const float* __restrict__ weights, int k, int H,
                                                      T* __restrict__ out, const T* __restrict__ shared,
                                                      const T* __restrict__ gate_logit) {
    const int t = blockIdx.x;
    const int c = (blockIdx.y * blockDim.x + threadIdx.x) * VEC;
    if (c >= H) return;
    float acc[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
    for (int j = 0; j < k; ++j) {
        const int pos = inv[t * k + j];
        if (pos < 0) continue;
        const float w = weights[(size_t)t * k + j];
        float v[VEC];
        load_f(y + (size_t)pos * H + c, v);
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] = fmaf(w, v[i], acc[i]);
    }
    if (shared) {
        const float sig = 1.f / (1.f + expf(-to_f(gate_logit[t])));
        float v[VEC];
        load_f(shared + (size_t)t * H + c, v);
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] = fmaf(sig, v[i], acc[i]);
    }
    store_f(out + (size_t)t * H + c, acc);
}

// ------------------------------------------------------------------------------------------------ streaming decode
// The decode path's kernels on sm_90 bulk copies (what 1..16 tokens run where the rows are 16-byte multiples):
//   gate_up_stream_kernel  persistent: grid = 2 CTAs an SM; the work items are (unit, tile of R gate/up row pairs),
//                          the shared expert's tiles first (they do not depend on the routing), then every distinct
//                          routed expert's; CTA b takes items b, b + G, ... through a ring of NS shared-memory stages
//                          that cp.async.bulk fills (the whole ring in flight: bytes in flight without registers).
//   down_stream_kernel     grid = output row tiles of RD rows; each warp streams whole units (an expert's RD down
//                          rows, or the shared expert's) through its own ring of D stages and writes one partial
//                          sum per (slot, row); the CTA then forms out[t, h] = sum_j w_j part[t k + j] + sig_t
//                          part_sh[t] in slot order (deterministic, no atomics). Every weight byte is read once.
// Both read the routed experts' rows only, and start streaming before their wait on the previous kernel where they
// can: gate/up the shared expert's first tiles, down every weight (the routing is complete when it is scheduled).
constexpr int STREAM_MAXS = 128;   // slots (T k) of the decode path
constexpr int STREAM_MAXE = 512;   // experts (the unit table's first-slot map)
constexpr int STREAM_NS = 8;       // gate/up stages at most
constexpr int STREAM_MT = 4;       // gate/up tokens per reduction
constexpr int STREAM_RD = 8;       // down rows per tile at most
constexpr int STREAM_D = 4;        // down stages per warp at most
constexpr int STREAM_DW = 16;      // down warps per CTA at most
constexpr int STREAM_AV = 2;       // down: act vectors a lane held per pass (W <= 32 STREAM_AV VEC in one pass)

// flags of the streaming kernels (moe.STREAM_FLAGS, for A/B runs): no L2 evict-first hint on the bulk copies; no L2
// lookahead prefetches
constexpr int STREAM_NO_HINT = 1, STREAM_NO_LOOKAHEAD = 2;

__device__ __forceinline__ void bulk_load_plain(unsigned dst, const void* src, unsigned bytes, unsigned bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
                 ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
#endif
}

__device__ __forceinline__ void bulk_load(unsigned dst, const void* src, unsigned bytes, unsigned bar,
                                          int flags = 0) {
    if (flags & STREAM_NO_HINT) {
        bulk_load_plain(dst, src, bytes, bar);
        return;
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // weights are read once: evict them from L2 first (keeps x, act and the routing resident)
    asm volatile(
        "{\n.reg .b64 pol;\ncreatepolicy.fractional.L2::evict_first.b64 pol, 1.0;\n"
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
        " [%0], [%1], %2, [%3], pol;\n}\n"
        ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
#endif
}

// The distinct routed experts of the slot list in order of first slot: n units, unit u = expert exp[u] with the
// slots slot[start[u] .. start[u + 1]) in slot order; es[s] = slot s's expert (-1 outside [0, E): dropped).
struct UnitTable {
    int n;
    int exp[STREAM_MAXS];
    int start[STREAM_MAXS + 1];
    int slot[STREAM_MAXS];
    int es[STREAM_MAXS];
    int first[STREAM_MAXE];   // scratch: the first slot of each expert
    int wc[4][STREAM_MAXS];   // scratch: slots of unit u among warp w's 32 slots
    int wtot[4];
};

// Whole CTA (blockDim >= 128, a multiple of 32), n_slots <= 128, E <= 512; ends with a barrier.
__device__ void build_units(const long long* __restrict__ experts, int n_slots, int E, UnitTable& ut) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int i = tid; i < E; i += blockDim.x) ut.first[i] = 0x7fffffff;
    for (int i = tid; i < 4 * STREAM_MAXS; i += blockDim.x) ut.wc[i / STREAM_MAXS][i % STREAM_MAXS] = 0;
    const int s = tid;
    const int e = s < n_slots ? expert_of(experts, s, E) : -1;
    if (s < STREAM_MAXS) ut.es[s] = e;
    __syncthreads();
    if (e >= 0) atomicMin(&ut.first[e], s);
    __syncthreads();
    const bool is_first = e >= 0 && ut.first[e] == s;
    unsigned fb = 0;
    if (warp < 4) {
        fb = __ballot_sync(0xffffffffu, is_first);
        if (lane == 0) ut.wtot[warp] = __popc(fb);
    }
    __syncthreads();
    if (is_first) {  // unit number = first slots before s
        int r = __popc(fb & ((1u << lane) - 1u));
        for (int w = 0; w < warp; ++w) r += ut.wtot[w];
        ut.exp[r] = e;
        ut.start[r] = s;            // temporarily: the unit's first slot (the slot -> unit map below reads it)
    }
    if (tid == 0) ut.n = ut.wtot[0] + ut.wtot[1] + ut.wtot[2] + ut.wtot[3];
    __syncthreads();
    // slot s's unit: the rank of its expert's first slot (a binary search over the units' first slots, ascending)
    int u = -1;
    if (e >= 0) {
        const int f = ut.first[e];
        int lo = 0, hi = ut.n - 1;
        while (lo < hi) {
            const int mid = (lo + hi) >> 1;
            if (ut.start[mid] < f) lo = mid + 1; else hi = mid;
        }
        u = lo;
    }
    int pos_w = 0;
    if (warp < 4) {  // this warp's earlier slots of the same unit, and its count of each unit
        const unsigned valid = __ballot_sync(0xffffffffu, e >= 0);
        const unsigned peers = __match_any_sync(0xffffffffu, u) & valid;
        pos_w = __popc(peers & ((1u << lane) - 1u));
        if (e >= 0 && (__ffs(peers) - 1) == lane) ut.wc[warp][u] = __popc(peers);
    }
    __syncthreads();
    // start[u] = exclusive scan over units of their slot counts (warps 0..3, 32 units each)
    int c = 0, incl = 0;
    if (warp < 4) {
        c = ut.wc[0][tid] + ut.wc[1][tid] + ut.wc[2][tid] + ut.wc[3][tid];
        incl = c;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int v = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += v;
        }
    }
    if (warp < 4 && lane == 31) ut.wtot[warp] = incl;  // (the first-slot counts were last read before a barrier)
    __syncthreads();
    if (warp < 4) {
        int base = 0;
        for (int w = 0; w < warp; ++w) base += ut.wtot[w];
        ut.start[tid] = base + incl - c;
        if (tid == STREAM_MAXS - 1) ut.start[STREAM_MAXS] = base + incl;
    }
    __syncthreads();
    if (e >= 0) {
        int pos = ut.start[u] + pos_w;
        for (int w = 0; w < warp; ++w) pos += ut.wc[w][u];
        ut.slot[pos] = s;
    }
    __syncthreads();
}

// grid = G (2 CTAs an SM), block 256 (8 warps); dynamic shared memory: ns stages of 2R rows of H (gate rows
// i0..i0+R-1, then the same up rows). Warp w takes row w % 2R of a stage over the part w / 2R of H (8 / 2R parts).
// Registers bounded for 3 CTAs an SM (80): two leave room for a CTA of the down kernel beside them (registers and
// shared memory), which then streams its rows while this grid finishes.
// pdl-early: sh_gate sh_up -- the shared expert's weights
template <typename T, int VEC>
__global__ void __launch_bounds__(256, 3) gate_up_stream_kernel(
        const T* __restrict__ x, const T* __restrict__ gate_up, const long long* __restrict__ experts, int n_slots,
        int k, int H, int I, int E, float* __restrict__ act, const T* __restrict__ sh_gate,
        const T* __restrict__ sh_up, int S, int T_, float* __restrict__ act_sh, int R, int ns,
        const T* __restrict__ sh_down_pf, int stage_x, int flags) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // bulk copies and mbarriers: sm_90 only (the host picks these kernels there)
    extern __shared__ __align__(128) unsigned char stage_raw[];
    __shared__ UnitTable ut;
    __shared__ __align__(8) unsigned long long full[STREAM_NS];
    __shared__ __align__(8) unsigned long long xbar;
    __shared__ float red[2][STREAM_MAXS][8];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int G = gridDim.x, b = blockIdx.x;
    const size_t stage_elems = (size_t)2 * R * H;
    const bool has_sh = sh_gate != nullptr;
    const int sh_items = has_sh ? (S + R - 1) / R : 0;
    const int r_tiles = (I + R - 1) / R;
    if (tid == 0) {
        for (int i = 0; i < ns; ++i) mbar_init(smem_u32(&full[i]), 1);
        mbar_init(smem_u32(&xbar), 1);
        fence_mbarrier_init();
    }
    __syncthreads();
    // stage_x: every token's x row in shared memory after the ring (one bulk copy once the wait returns), so an
    // item's reduction reads no global memory; else x from L1/L2
    T* xs = reinterpret_cast<T*>(stage_raw) + (size_t)ns * stage_elems;
    // item -> (gate rows, up rows, width, first row, unit); unit -1 = the shared expert
    auto decode = [&](int item, const T*& wg, const T*& wu, int& width, int& i0, int& unit) {
        if (item < sh_items) {
            wg = sh_gate; wu = sh_up; width = S; i0 = item * R; unit = -1;
        } else {
            const int j = item - sh_items;
            unit = j / r_tiles;
            i0 = (j - unit * r_tiles) * R;
            wg = gate_up + (size_t)ut.exp[unit] * 2 * I * H;
            wu = wg + (size_t)I * H;
            width = I;
        }
    };
    auto issue = [&](int n) {  // the CTA's n-th item into stage n % ns (thread 0)
        const int item = b + n * G;
        const T *wg, *wu;
        int width, i0, unit;
        decode(item, wg, wu, width, i0, unit);
        const int rows = min(R, width - i0);
        const unsigned bytes = (unsigned)(rows * H * sizeof(T));
        const unsigned bar = smem_u32(&full[n % ns]);
        T* st = reinterpret_cast<T*>(stage_raw) + (size_t)(n % ns) * stage_elems;
        mbar_arrive_expect_tx(bar, 2 * bytes);
        bulk_load(smem_u32(st), wg + (size_t)i0 * H, bytes, bar, flags);
        bulk_load(smem_u32(st + (size_t)R * H), wu + (size_t)i0 * H, bytes, bar, flags);
    };
    auto lookahead = [&](int n) {  // the CTA's n-th item into L2 (the whole CTA, a line a thread): ring refills hit L2
        const int item = b + n * G;
        if ((flags & STREAM_NO_LOOKAHEAD) || item >= sh_items + ut.n * r_tiles) return;
        const T *wg, *wu;
        int width, i0, unit;
        decode(item, wg, wu, width, i0, unit);
        const int lines = (min(R, width - i0) * H * (int)sizeof(T) + 127) / 128;
        for (int l = tid; l < 2 * lines; l += blockDim.x)
            prefetch_l2(reinterpret_cast<const char*>((l < lines ? wg : wu) + (size_t)i0 * H) + (l % lines) * 128);
    };
    // before the wait: the shared expert's items of the ring's first stages (weights only)
    int issued = 0;
    if (tid == 0)
        while (issued < ns && b + issued * G < sh_items) issue(issued++);
    if (sh_down_pf) {  // the shared expert's down rows into L2 (the down kernel reads them): the grid's share each
        const size_t lines = ((size_t)H * S * sizeof(T) + 127) / 128;
        for (size_t l = (size_t)b * blockDim.x + tid; l < lines; l += (size_t)G * blockDim.x)
            prefetch_l2(reinterpret_cast<const char*>(sh_down_pf) + l * 128);
    }
    wait_for_primary_grid();   // the routing (top-k) is complete and visible; x too
    allow_dependent_launch();  // the down kernel may be scheduled (it streams its rows before its own wait)
    if (stage_x && tid == 0) {
        const unsigned xbytes = (unsigned)((size_t)T_ * H * sizeof(T));
        mbar_arrive_expect_tx(smem_u32(&xbar), xbytes);
        bulk_load_plain(smem_u32(xs), x, xbytes, smem_u32(&xbar));  // (x stays in L2 for the other CTAs)
    }
    build_units(experts, n_slots, E, ut);
    const int total = sh_items + ut.n * r_tiles;
    if (tid == 0)
        while (issued < ns && b + issued * G < total) issue(issued++);
    for (int n = ns; n < 2 * ns; ++n) lookahead(n);
    const T* xsrc = stage_x ? xs : x;
    if (stage_x) mbar_wait(smem_u32(&xbar), 0);
    const int rows2 = 2 * R, parts = 8 / rows2;
    const int r = warp % rows2, part = warp / rows2;
    const int nvec = H / VEC;
    const int per_part = (nvec + parts - 1) / parts;
    const int q_lo = part * per_part, q_hi = min(nvec, q_lo + per_part);
    for (int n = 0; b + n * G < total; ++n) {
        const int item = b + n * G;
        const T *wg, *wu;
        int width, i0, unit;
        decode(item, wg, wu, width, i0, unit);
        const int rows = min(R, width - i0);
        const int count = unit < 0 ? T_ : ut.start[unit + 1] - ut.start[unit];
        const int first = unit < 0 ? 0 : ut.start[unit];
        const int buf = n & 1;
        mbar_wait(smem_u32(&full[n % ns]), (n / ns) & 1);
        const T* row = reinterpret_cast<const T*>(stage_raw) + (size_t)(n % ns) * stage_elems + (size_t)r * H;
        if ((r % R) < rows) {
            for (int c0 = 0; c0 < count; c0 += STREAM_MT) {
                float acc[STREAM_MT];
                const T* xr[STREAM_MT];
#pragma unroll
                for (int j = 0; j < STREAM_MT; ++j) {
                    acc[j] = 0.f;
                    const int c = min(c0 + j, count - 1);
                    xr[j] = xsrc + (size_t)(unit < 0 ? c : ut.slot[first + c] / k) * H;
                }
                for (int q = q_lo + lane; q < q_hi; q += 32) {
                    const Vec<T, VEC> wv = reinterpret_cast<const Vec<T, VEC>*>(row)[q];
                    float wf[VEC];
#pragma unroll
                    for (int c = 0; c < VEC; ++c) wf[c] = to_f(wv.v[c]);
#pragma unroll
                    for (int j = 0; j < STREAM_MT; ++j) {
                        if (c0 + j < count) {
                            const Vec<T, VEC> xv = reinterpret_cast<const Vec<T, VEC>*>(xr[j])[q];
#pragma unroll
                            for (int c = 0; c < VEC; ++c) acc[j] = fmaf(wf[c], to_f(xv.v[c]), acc[j]);
                        }
                    }
                }
#pragma unroll
                for (int j = 0; j < STREAM_MT; ++j) {
                    if (c0 + j < count) {  // (uniform over the warp)
                        const float v = warp_sum(acc[j]);
                        if (lane == 0) red[buf][c0 + j][warp] = v;
                    }
                }
            }
        }
        __syncthreads();  // the stage is read and red[buf] written
        if (tid == 0 && b + issued * G < total) issue(issued++);
        lookahead(n + 2 * ns);
        for (int idx = tid; idx < rows * count; idx += blockDim.x) {
            const int c = idx / rows, i = idx - c * rows;
            float g = 0.f, up = 0.f;
            for (int p = 0; p < parts; ++p) {
                g += red[buf][c][p * rows2 + i];
                up += red[buf][c][p * rows2 + R + i];
            }
            const float a = g / (1.f + expf(-g)) * up;
            if (unit < 0) act_sh[(size_t)c * S + i0 + i] = a;
            else act[(size_t)ut.slot[first + c] * I + i0 + i] = a;
        }
    }
#else
    __trap();
#endif
}

// grid = ceil(H / RD) row tiles, block = 32 nw (nw <= 16 warps); dynamic shared memory: nw d stages of RD rows of
// W = max(I, S) elements. Unit v: v = 0 the shared expert (when given), then the routed units; warp w streams
// the units w, w + nw, ... through its d stages (its own barriers: no CTA barrier in the loop).
// pdl-early: down sh_down sh_gate_w experts weights x -- weights, and the routing and x, written two or more kernels back: the gate/up kernel before this one triggers only after its own wait
template <typename T, int VEC>
__global__ void __launch_bounds__(512, 2) down_stream_kernel(
        const float* __restrict__ act, const T* __restrict__ down, const float* __restrict__ weights,
        const long long* __restrict__ experts, int n_slots, int k, int H, int I, int E, T* __restrict__ out,
        const float* __restrict__ act_sh, const T* __restrict__ sh_down, const T* __restrict__ sh_gate_w,
        const T* __restrict__ x, int S, int T_, int RD, int d, int flags) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // bulk copies and mbarriers: sm_90 only (the host picks these kernels there)
    extern __shared__ __align__(128) unsigned char stage_raw[];
    __shared__ UnitTable ut;
    __shared__ __align__(8) unsigned long long full[STREAM_DW][STREAM_D];
    __shared__ float part[STREAM_MAXS][STREAM_RD];      // per (slot, row): down[e][h, :] . act[slot, :]
    __shared__ float part_sh[STREAM_MAXS][STREAM_RD];   // per (token, row): sh_down[h, :] . act_sh[t, :]
    __shared__ float sig_s[STREAM_MAXS];
    __shared__ float w_s[STREAM_MAXS];                  // the routing weights (read before the wait: top-k is done)
    __shared__ float sig_red[STREAM_MAXS][STREAM_DW];   // the shared gate's partial sums per (token, warp)
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
    const int h0 = blockIdx.x * RD;
    const int rows = min(RD, H - h0);
    const bool has_sh = sh_down != nullptr;
    const int W = max(I, S);
    const size_t stage_elems = (size_t)RD * W;
    if (tid == 0) {
        for (int w = 0; w < nw; ++w)
            for (int i = 0; i < d; ++i) mbar_init(smem_u32(&full[w][i]), 1);
        fence_mbarrier_init();
    }
    __syncthreads();
    auto unit_rows = [&](int v, unsigned& bytes) {  // unit v's RD rows (contiguous)
        const bool sh = has_sh && v == 0;
        bytes = (unsigned)(rows * (sh ? S : I) * sizeof(T));
        return sh ? sh_down + (size_t)h0 * S : down + ((size_t)ut.exp[v - has_sh] * H + h0) * I;
    };
    auto issue = [&](int v, int m) {  // unit v into this warp's stage m % d (lane 0)
        unsigned bytes;
        const T* src = unit_rows(v, bytes);
        const unsigned bar = smem_u32(&full[warp][m % d]);
        T* st = reinterpret_cast<T*>(stage_raw) + (size_t)(warp * d + m % d) * stage_elems;
        mbar_arrive_expect_tx(bar, bytes);
        bulk_load(smem_u32(st), src, bytes, bar, flags);
    };
    auto lookahead = [&](int v) {  // unit v's rows into L2 (the warp, a line a lane): its ring refill hits L2
        if ((flags & STREAM_NO_LOOKAHEAD) || v >= ut.n + has_sh) return;
        unsigned bytes;
        const T* src = unit_rows(v, bytes);
        for (unsigned l = lane; l < (bytes + 127) / 128; l += 32)
            prefetch_l2(reinterpret_cast<const char*>(src) + l * 128);
    };
    if (has_sh && warp == 0 && lane == 0) issue(0, 0);  // the shared expert's rows need no routing
    // the routing is complete (the gate/up kernel let this grid be scheduled only after its own wait on it)
    if (tid < n_slots) w_s[tid] = weights[tid];
    build_units(experts, n_slots, E, ut);
    const int nu = ut.n + has_sh;
    if (lane == 0)
        for (int m = 0; m < d; ++m) {
            const int v = warp + m * nw;
            if (v < nu && !(has_sh && v == 0)) issue(v, m);
        }
    for (int m = d; m < 2 * d; ++m) lookahead(warp + m * nw);
    if (has_sh) {  // the shared expert's gate sigmoid(w . x[t]) per token (x is complete: it preceded the router):
        // the CTA's threads over H in 16-byte vectors, 4 tokens' loads in flight at once, partial sums per warp
        // combined in warp order
        const int nvh = H / VEC;
        for (int t0 = 0; t0 < T_; t0 += 4) {
            float p[4] = {0.f, 0.f, 0.f, 0.f};
            for (int q = tid; q < nvh; q += blockDim.x) {
                const Vec<T, VEC> g = reinterpret_cast<const Vec<T, VEC>*>(sh_gate_w)[q];
                Vec<T, VEC> xv[4];
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (t0 + j < T_) xv[j] = reinterpret_cast<const Vec<T, VEC>*>(x + (size_t)(t0 + j) * H)[q];
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (t0 + j < T_)
#pragma unroll
                        for (int c = 0; c < VEC; ++c) p[j] = fmaf(to_f(g.v[c]), to_f(xv[j].v[c]), p[j]);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float v = warp_sum(p[j]);
                if (lane == 0 && t0 + j < T_) sig_red[t0 + j][warp] = v;
            }
        }
        __syncthreads();
        for (int t = tid; t < T_; t += blockDim.x) {
            float g = 0.f;
            for (int w = 0; w < nw; ++w) g += sig_red[t][w];
            sig_s[t] = 1.f / (1.f + expf(-g));
        }
    }
    wait_for_primary_grid();   // the gate/up activations are complete and visible
    allow_dependent_launch();
    for (int m = 0;; ++m) {
        const int v = warp + m * nw;
        if (v >= nu) break;
        const bool sh = has_sh && v == 0;
        const int width = sh ? S : I;
        const int u = v - has_sh;
        const int count = sh ? T_ : ut.start[u + 1] - ut.start[u];
        const int first = sh ? 0 : ut.start[u];
        const T* st = reinterpret_cast<const T*>(stage_raw) + (size_t)(warp * d + m % d) * stage_elems;
        const int nvec = width / VEC;
        for (int c = 0; c < count; ++c) {
            const int slot = sh ? c : ut.slot[first + c];
            const float* a = sh ? act_sh + (size_t)c * S : act + (size_t)slot * I;
            float acc[STREAM_RD];
#pragma unroll
            for (int rr = 0; rr < STREAM_RD; ++rr) acc[rr] = 0.f;
            for (int q0 = 0; q0 < nvec; q0 += 32 * STREAM_AV) {
                // the act vectors first (VEC floats each: 16-byte loads, act rows being 16-byte multiples), then
                // (the unit's first pass) the wait for its weights: the loads overlap the wait
                float af[STREAM_AV][VEC];
#pragma unroll
                for (int i = 0; i < STREAM_AV; ++i) {
                    const int q = q0 + lane + 32 * i;
                    if (q < nvec)
#pragma unroll
                        for (int c2 = 0; c2 < VEC; c2 += 4) {
                            const float4 f = *reinterpret_cast<const float4*>(a + (size_t)q * VEC + c2);
                            af[i][c2] = f.x; af[i][c2 + 1] = f.y; af[i][c2 + 2] = f.z; af[i][c2 + 3] = f.w;
                        }
                }
                if (c == 0 && q0 == 0) mbar_wait(smem_u32(&full[warp][m % d]), (m / d) & 1);
#pragma unroll
                for (int i = 0; i < STREAM_AV; ++i) {
                    const int q = q0 + lane + 32 * i;
                    if (q < nvec) {
#pragma unroll
                        for (int rr = 0; rr < STREAM_RD; ++rr) {
                            if (rr < rows) {
                                const Vec<T, VEC> wv = reinterpret_cast<const Vec<T, VEC>*>(st + (size_t)rr * width)[q];
#pragma unroll
                                for (int c2 = 0; c2 < VEC; ++c2) acc[rr] = fmaf(to_f(wv.v[c2]), af[i][c2], acc[rr]);
                            }
                        }
                    }
                }
            }
#pragma unroll
            for (int rr = 0; rr < STREAM_RD; ++rr) {
                if (rr < rows) {
                    const float s = warp_sum(acc[rr]);
                    if (lane == 0) (sh ? part_sh[c] : part[slot])[rr] = s;
                }
            }
        }
        if (count == 0) mbar_wait(smem_u32(&full[warp][m % d]), (m / d) & 1);  // (every copy is waited for)
        __syncwarp();  // the stage is read: refill it with this warp's unit d ahead
        if (lane == 0 && v + d * nw < nu) issue(v + d * nw, m + d);
        lookahead(v + 2 * d * nw);
    }
    __syncthreads();
    for (int idx = tid; idx < T_ * rows; idx += blockDim.x) {
        const int t = idx / rows, rr = idx - t * rows;
        float acc = 0.f;
        for (int j = 0; j < k; ++j) {
            const int s = t * k + j;
            if (ut.es[s] >= 0) acc = fmaf(w_s[s], part[s][rr], acc);
        }
        if (has_sh) acc = fmaf(sig_s[t], part_sh[t][rr], acc);
        out[(size_t)t * H + h0 + rr] = from_f<T>(acc);
    }
#else
    __trap();
#endif
}

// ------------------------------------------------------------------------------------------------ mma decode
// The decode path for T <= 8 tokens as two weight-streaming GEMVs on the tensor cores (gemm.cu's skinny GEMM, the
// weight rows gathered from the routed experts). A unit is the shared expert (v = 0, when given) or one distinct
// routed expert (v = 1, 2, ... in order of first slot). Every unit is multiplied with all T tokens at once (one
// 16 x 8 mma tile a 32-wide k step: the tokens are the 8 columns, so the products a token does not need cost no
// bytes), and the routing enters as one weight per (token, unit):
//   gate_up_mma_kernel  grid (ceil(max(I, S) / 16), units): CTA (r, v) takes the 16 gate and 16 up rows r of unit v
//                       over all of H and writes xd[t, col(v) + i] = w(t, v) silu(g) u, rounded to T, with
//                       w(t, v) = the sum of token t's routing weights over its slots naming that expert (0 where
//                       none does) and sigmoid(gate . x_t) for the shared expert; col(v): the shared expert's S
//                       columns first, then I per routed unit.
//   down_mma_kernel     grid (ceil(H / 16)): out[t, h] = sum_c D[h, c] xd[t, c], D's row h being the units' down rows
//                       h laid end to end along c (sh_down[h, :], then down[e_1][h, :], ...). Every weight byte is
//                       read once, the sum is fp32 in a fixed order (deterministic), rounded once.
// Requires H, I, S multiples of 32, 16-byte aligned rows and at most 128 slots, 512 experts (the host checks).
constexpr int MMA_WARPS = 8;     // per CTA, splitting the k steps (warp w takes steps w, w + 8, ...)
constexpr int MMA_ROWS = 16;     // weight rows of a tile (the mma's M)
constexpr int MMA_KSTEP = 32;    // k per step (two m16n8k16)
constexpr int MMA_TOKENS = 8;    // tokens (the mma's N)

// Whole CTA (blockDim >= 128): unit u's expert among the distinct valid experts of slots [0, n_slots) in order of
// first slot, or -1 if there are fewer than u + 1 of them. n_slots <= 128, E <= 512. first: E ints of scratch.
// build_units' unit order, but only the one expert a gate/up CTA needs: 4 barriers instead of its 8, in every one
// of the many CTAs, on the path between the routing and the first weight loads.
__device__ int nth_routed_expert(const long long* __restrict__ experts, int n_slots, int E, int u, int* first,
                                 int* wtot, int* pick) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int i = tid; i < E; i += blockDim.x) first[i] = 0x7fffffff;
    if (tid == 0) *pick = -1;
    __syncthreads();
    const int e = tid < n_slots ? expert_of(experts, tid, E) : -1;
    if (e >= 0) atomicMin(&first[e], tid);
    __syncthreads();
    const bool is_first = e >= 0 && first[e] == tid;
    unsigned fb = 0;
    if (warp < 4) {
        fb = __ballot_sync(0xffffffffu, is_first);
        if (lane == 0) wtot[warp] = __popc(fb);
    }
    __syncthreads();
    if (is_first) {
        int r = __popc(fb & ((1u << lane) - 1u));
        for (int w = 0; w < warp; ++w) r += wtot[w];
        if (r == u) *pick = e;
    }
    __syncthreads();
    return *pick;
}

// The CTA's SETS 16-row tiles over K: this warp's k steps st0, st0 + stride, ... (st0 = warp, stride = MMA_WARPS
// unless K is split between CTAs), U steps' weight loads (row pointers from rows(st, s, h)) in flight before their
// mmas; xrow: this thread's x row (token g = lane / 4; rows past T repeat row 0: their columns are never stored).
// Then the warps' partial tiles in red (the caller adds them in warp order). `before_x` runs once, after the first
// steps' weight loads are issued and before any x load (the PDL wait).
// pol: the weight loads' L2 policy (l2_policy).
template <typename T, int SETS, int U, typename Rows, typename Before>
__device__ __forceinline__ void mma_tile(int steps, int st0, int stride, Rows rows, const T* xrow, Before before_x,
                                         float (&red)[MMA_WARPS][SETS][MMA_ROWS][MMA_TOKENS], unsigned long long pol) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    float c[SETS][1][4];
#pragma unroll
    for (int s = 0; s < SETS; ++s) c[s][0][0] = c[s][0][1] = c[s][0][2] = c[s][0][3] = 0.f;
    bool waited = false;
    for (int st = st0; st < steps || !waited; st += U * stride) {
        uint4 a[U][SETS][2], b[U][1];
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (st + u * stride < steps)
#pragma unroll
                for (int s = 0; s < SETS; ++s)
#pragma unroll
                    for (int h = 0; h < 2; ++h) a[u][s][h] = load_stream(rows(st + u * stride, s, h) + 8 * q, pol);
        if (!waited) {
            before_x();
            waited = true;
        }
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (st + u * stride < steps) b[u][0] = load_l2(xrow + (size_t)(st + u * stride) * MMA_KSTEP + 8 * q);
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (st + u * stride < steps) mma_k32<T, SETS, 1>(c, a[u], b[u]);
    }
    // c[s][0][0], [1]: row g, token columns 2q, 2q + 1; c[s][0][2], [3]: row g + 8
#pragma unroll
    for (int s = 0; s < SETS; ++s) {
        red[warp][s][g][2 * q] = c[s][0][0];
        red[warp][s][g][2 * q + 1] = c[s][0][1];
        red[warp][s][g + 8][2 * q] = c[s][0][2];
        red[warp][s][g + 8][2 * q + 1] = c[s][0][3];
    }
    __syncthreads();
}

// grid (ceil(max(I, S) / 16), has_sh + min(n_slots, E)), block 256 (two CTAs an SM).
// xd: [T, ldx] (ldx >= S + units I). evict_first: the weight loads carry the L2 evict_first policy (read once).
// (H200, 35B-A3B, moe_mma_ab-H200-2026-12-04.json: 3 CTAs an SM at U = 2, K split over a cluster pair as in
// down_mma_kernel, 8-row CTAs of 4 warps (six an SM), and the down rows prefetched into L2 here were all slower.)
// pdl-early: sh_gate sh_up -- the shared expert's weights (its CTAs' first loads; routed CTAs wait first)
template <typename T, int U>
__global__ void __launch_bounds__(MMA_WARPS * 32, 2) gate_up_mma_kernel(
        const T* __restrict__ x, const T* __restrict__ gate_up, const long long* __restrict__ experts,
        const float* __restrict__ weights, int n_slots, int k, int H, int I, int E, const T* __restrict__ sh_gate,
        const T* __restrict__ sh_up, const T* __restrict__ sh_gate_w, int S, int T_, T* __restrict__ xd, int ldx,
        int evict_first) {
    __shared__ float red[MMA_WARPS][2][MMA_ROWS][MMA_TOKENS];
    __shared__ int first[STREAM_MAXE];
    __shared__ int wtot[4];
    __shared__ int pick;
    __shared__ float wt[MMA_TOKENS];
    __shared__ float sig_red[MMA_WARPS][MMA_TOKENS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2;
    const int v = blockIdx.y;  // the unit
    const bool has_sh = sh_gate != nullptr;
    const bool sh = has_sh && v == 0;
    const int width = sh ? S : I;
    const int n0 = blockIdx.x * MMA_ROWS;
    if (n0 >= width) return;  // (the shared expert and the routed experts differ in width)
    const T* wg = sh_gate;
    int e = -1;
    if (!sh) {  // the routing first: which expert this unit is
        wait_for_primary_grid(experts, weights);  // (their loads stay below the wait)
        allow_dependent_launch();
        e = nth_routed_expert(experts, n_slots, E, v - has_sh, first, wtot, &pick);
        if (e < 0) return;  // fewer distinct experts than the grid's units (uniform over the CTA)
        wg = gate_up + (size_t)e * 2 * I * H;
    }
    const T* wu = sh ? sh_up : wg + (size_t)I * H;
    const T* xrow = x + (size_t)(g < T_ ? g : 0) * H;
    const int r0 = min(n0 + g, width - 1), r1 = min(n0 + g + 8, width - 1);  // rows past the width: never stored
    auto rows = [&](int st, int s, int h) {
        return (s ? wu : wg) + (size_t)(h ? r1 : r0) * H + (size_t)st * MMA_KSTEP;
    };
    mma_tile<T, 2, U>(H / MMA_KSTEP, warp, MMA_WARPS, rows, xrow, [&] { if (sh) wait_and_release(); }, red,
                      l2_policy(evict_first != 0));
    // the per-token weight of this unit
    if (sh) {  // sigmoid(sh_gate_w . x_t): the CTA over H, one 8-vector a thread a pass
        float p[MMA_TOKENS];
#pragma unroll
        for (int t = 0; t < MMA_TOKENS; ++t) p[t] = 0.f;
        for (int c = tid * 8; c < H; c += blockDim.x * 8) {
            const uint4 gv = load_stream(sh_gate_w + c);
            const T* ge = reinterpret_cast<const T*>(&gv);
#pragma unroll
            for (int t = 0; t < MMA_TOKENS; ++t) {
                if (t < T_) {
                    const uint4 xv = load_l2(x + (size_t)t * H + c);
                    const T* xe = reinterpret_cast<const T*>(&xv);
#pragma unroll
                    for (int i = 0; i < 8; ++i) p[t] = fmaf(to_f(ge[i]), to_f(xe[i]), p[t]);
                }
            }
        }
#pragma unroll
        for (int t = 0; t < MMA_TOKENS; ++t) {
            const float v = warp_sum(p[t]);
            if (lane == 0) sig_red[warp][t] = v;
        }
        __syncthreads();
        if (tid < T_) {
            float gs = 0.f;
            for (int w = 0; w < MMA_WARPS; ++w) gs += sig_red[w][tid];
            wt[tid] = 1.f / (1.f + expf(-gs));
        }
    } else if (tid < T_) {
        float w = 0.f;
        for (int j = 0; j < k; ++j)
            if (expert_of(experts, tid * k + j, E) == e) w += weights[tid * k + j];
        wt[tid] = w;
    }
    __syncthreads();
    const int col0 = sh ? 0 : (has_sh ? S : 0) + (v - has_sh) * I;
    for (int idx = tid; idx < MMA_ROWS * T_; idx += blockDim.x) {
        const int r = idx / T_, t = idx - r * T_;
        if (n0 + r < width) {
            float gs = 0.f, us = 0.f;
#pragma unroll
            for (int w = 0; w < MMA_WARPS; ++w) {
                gs += red[w][0][r][t];
                us += red[w][1][r][t];
            }
            xd[(size_t)t * ldx + col0 + n0 + r] = from_f<T>(wt[t] * (gs / (1.f + expf(-gs)) * us));
        }
    }
}

// grid (ceil(H / 16), SPLIT), block 256; SPLIT > 1: clusters of SPLIT CTAs along y split the k steps (CTA z's
// warps take steps warp + 8 z, + 8 SPLIT, ...) and add their tiles through distributed shared memory, each CTA
// finishing the rows r % SPLIT == its rank (sm_90; the host launches SPLIT = 1 before it). evict_first: as in
// gate_up_mma_kernel.
// pdl-early: down sh_down experts -- the weights, and the routing, written two kernels back: the gate/up kernel before this one lets it launch only after its own wait on the top-k
template <typename T, int U, int SPLIT>
__global__ void QKERN_CLUSTER_Y(SPLIT) __launch_bounds__(MMA_WARPS * 32, 2) down_mma_kernel(
        const T* __restrict__ xd, int ldx, const T* __restrict__ down, const long long* __restrict__ experts,
        int n_slots, int H, int I, int E, const T* __restrict__ sh_down, int S, int T_, T* __restrict__ out,
        int evict_first) {
    __shared__ float red[MMA_WARPS][1][MMA_ROWS][MMA_TOKENS];
    __shared__ float part[SPLIT > 1 ? MMA_ROWS : 1][MMA_TOKENS];
    __shared__ UnitTable ut;
    __shared__ const T* ubase[STREAM_MAXS + 1];  // each unit's down rows
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2;
    const int z = SPLIT > 1 ? (int)cluster_ctarank() : 0;
    build_units(experts, n_slots, E, ut);
    const int Sp = sh_down != nullptr ? S : 0;
    if (tid < ut.n) ubase[tid] = down + (size_t)ut.exp[tid] * H * I;
    __syncthreads();
    const int n0 = blockIdx.x * MMA_ROWS;
    const int r0 = min(n0 + g, H - 1), r1 = min(n0 + g + 8, H - 1);
    const int per_unit = I / MMA_KSTEP;
    const T* xrow = xd + (size_t)(g < T_ ? g : 0) * ldx;
    auto rows = [&](int st, int, int h) {
        const int r = h ? r1 : r0;
        const int c = st * MMA_KSTEP;
        if (c < Sp) return sh_down + (size_t)r * S + c;
        const int u = (c - Sp) / MMA_KSTEP / per_unit;
        return ubase[u] + (size_t)r * I + (c - Sp - u * I);
    };
    mma_tile<T, 1, U>((Sp + ut.n * I) / MMA_KSTEP, warp + MMA_WARPS * z, MMA_WARPS * SPLIT, rows, xrow,
                      [] { wait_and_release(); }, red, l2_policy(evict_first != 0));
    if constexpr (SPLIT > 1) {  // this CTA's tile, then the cluster's, in rank order (the same sum in every CTA)
        for (int idx = tid; idx < MMA_ROWS * MMA_TOKENS; idx += blockDim.x) {
            const int r = idx / MMA_TOKENS, t = idx % MMA_TOKENS;
            float acc = 0.f;
#pragma unroll
            for (int w = 0; w < MMA_WARPS; ++w) acc += red[w][0][r][t];
            part[r][t] = acc;
        }
        cluster_barrier();
    }
    for (int idx = tid; idx < MMA_ROWS * T_; idx += blockDim.x) {
        const int r = idx / T_, t = idx - r * T_;
        if (n0 + r < H && (SPLIT == 1 || r % SPLIT == z)) {
            float acc = 0.f;
            if constexpr (SPLIT > 1) {
#pragma unroll
                for (int i = 0; i < SPLIT; ++i) acc += ld_cluster_f32(&part[r][t], i);
            } else {
#pragma unroll
                for (int w = 0; w < MMA_WARPS; ++w) acc += red[w][0][r][t];
            }
            out[(size_t)t * H + n0 + r] = from_f<T>(acc);
        }
    }
    if constexpr (SPLIT > 1) cluster_barrier();  // no CTA leaves while another may still read its part
}

}  // namespace moe
