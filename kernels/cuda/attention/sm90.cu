// Packed varlen flash attention (forward) for Hopper (sm_90a): attn::attn_fwd_ws, warp-specialised, FA3's structure.
// Same meaning, layouts and tile map as attn_fwd (sm80.cu); the mask, softmax and per-thread epilogue are shared
// (online_softmax.cuh).
//
// One CTA = NCWG consumer warpgroups of 64 query rows each (BM = 64 * NCWG) plus one producer warpgroup.
// Producer (ws_producer): one thread issues the tensor-memory-accelerator copies (cp.async.bulk.tensor) of Q, then
//   of K_j and V_j into a STAGES-deep ring of shared-memory stages. Each copy completes a stage's "full" mbarrier by
//   its byte count; before overwriting a stage the thread waits on its "empty" mbarrier. The other producer warps
//   only give their registers away (setmaxnreg) and exit.
// Consumers (ws_consumer; FA3's intra-warpgroup pipelining): per key tile j, issue S_j = Q K_j^T and
//   O += P_{j-1} V_{j-1} as two asynchronous wgmma groups; wait for the first; release K_j; mask and exponentiate
//   S_j while the tensor cores still run PV; wait for PV; release V_{j-1}; rescale O (only if a row max grew).
//   O_{j-1} holds P_{j-1} V_{j-1} relative to the max m_{j-1} when it is rescaled by exp2(m_{j-1} - m_j).
// Products: S = Q K^T is m64nBNk16 with Q and K read by the tensor cores from shared memory; O += P V is m64nDk16
//   with P from registers (the S accumulator layout per warp is the mma.sync one) and V read N-major (trans-b).
//   PV's n-dim is D itself (n72 is a legal wgmma shape; 256 runs as two n128 halves).
// Shared memory: every tile (Q, each K and V stage) is stored as NREG = ceil(D / 64) regions of [rows][64]
//   elements in the 128-byte swizzle layout that both the copy engine (CU_TENSOR_MAP_SWIZZLE_128B) and wgmma
//   (layout type 1) use: 8-row atoms of 1024 bytes, the 16-byte chunks of row r XOR-ed with r % 8. Region g
//   holds columns 64 g .. 64 g + 63; columns past D are out of the tensor's bounds, so the copy engine writes
//   zeros there. That is the only padding of D = 72 (to 80 for QK^T's k-steps of 16; PV's n is 72 exactly),
//   and it exists only in shared memory. Rows past the end of the packed tensor are zero-filled the same way.
//   Q and K are read K-major (k-step ks at region ks / 4, byte 32 (ks % 4) of each row), V N-major (the 64-column
//   regions are the n-direction repeats, LBO apart; 8-row groups 1024 bytes apart).
// Epilogue (ws_epilogue): a warpgroup whose 64 rows all lie in the segment writes O / l into its own rows of the Q
//   tile (free after its last QK), in the same swizzled layout, and stores them with one TMA copy per region
//   (coalesced); a partial last tile stores per thread, as a whole box would overwrite rows of the next segment.
// Rounds (non-causal, where two Q buffers fit): a CTA runs up to max_rounds consecutive tiles of one segment and
//   head. The K/V ring runs on across tiles, the producer loads tile r + 1's Q into the other buffer while tile r
//   computes, and a buffer is refilled once every consumer warp has finished the epilogue that stages O in it
//   (q_empty). This saves a CTA's fixed cost (prologue, epilogue, the gap to the next CTA) per extra tile.
// No CTA-wide barrier after the prologue: stages are handed over by the mbarriers alone.
#include "include/mbarrier.cuh"
#include "include/tma.cuh"
#include "include/varlen.cuh"
#include "include/warpgroup.cuh"
#include "include/wgmma.cuh"
#include "attention/online_softmax.cuh"

namespace attn {
using namespace qkern;

// Compile-time shape of one instantiation.
template <int D, int NCWG, int BN, int STAGES>
struct WsShape {
    static constexpr int BM = 64 * NCWG;
    static constexpr int DK = (D + 15) / 16 * 16;   // k-extent of QK^T (80 for D = 72)
    static constexpr int NREG = (D + 63) / 64;      // 64-column regions per row
    static constexpr int NB = BN / 8, KB = BN / 16, DB = D / 8;
    static constexpr u32 Q_BYTES = NREG * BM * 128, KV_BYTES = NREG * BN * 128;  // one tile, all regions
    // registers per thread after setmaxnreg (FA3's split): the producer's release must cover the consumers'
    // raise, or setmaxnreg.inc would wait forever. NCWG = 2: 384 threads start at 168 (the launch bound),
    // 128 * (168 - 24) = 256 * (240 - 168). NCWG = 3: 512 threads start at 128, 128 * (128 - 32) = 384 * (160 - 128).
    // NCWG = 4: 640 threads start at 96, 128 * (96 - 24) >= 512 * (112 - 96).
    static constexpr int PRODUCER_REGS = NCWG == 3 ? 32 : 24;
    static constexpr int CONSUMER_REGS = NCWG == 2 ? 240 : NCWG == 3 ? 160 : 112;
    // Two Q buffers where they fit in shared memory (227 KB): a CTA then runs up to max_rounds consecutive tiles of
    // one segment and head, the next tile's Q loading while the current one computes (kernels/attention.py mirrors
    // this rule in WsVariant.qbufs).
    static constexpr int QBUF = 2 * Q_BYTES + 2 * STAGES * KV_BYTES + 1024 <= 227 * 1024 ? 2 : 1;
    static_assert(NCWG >= 2 && NCWG <= 4, "2 to 4 consumer warpgroups");
    static_assert(D % 8 == 0 && (BN == 64 || BN == 128) && STAGES >= 2, "tile shape");
};

// Shared-memory addresses of the tiles and mbarriers. Barriers: per Q buffer full (one producer arrival plus the
// copies' bytes) and empty (4 * NCWG arrivals, one per consumer warp, after its epilogue); per stage K full, V full,
// K empty, V empty (the same counts).
template <class S, int STAGES>
struct WsSmem {
    u32 sQ, sK, sV, bar0;
    __device__ __forceinline__ u32 q_full(int b) const { return bar0 + 8u * b; }
    __device__ __forceinline__ u32 q_empty(int b) const { return bar0 + 8u * (S::QBUF + b); }
    __device__ __forceinline__ u32 k_full(int s) const { return bar0 + 8u * (2 * S::QBUF + s); }
    __device__ __forceinline__ u32 v_full(int s) const { return bar0 + 8u * (2 * S::QBUF + STAGES + s); }
    __device__ __forceinline__ u32 k_empty(int s) const { return bar0 + 8u * (2 * S::QBUF + 2 * STAGES + s); }
    __device__ __forceinline__ u32 v_empty(int s) const { return bar0 + 8u * (2 * S::QBUF + 3 * STAGES + s); }
};

// The CTA's work: `rounds` consecutive tiles of BM rows from tile `first` of segment [seg_start, seg_start + L),
// query head `head`, key/value head `kvh`.
struct WsWork {
    int seg_start, L, first, rounds, head, kvh;
};

template <int BM, int BN, bool CAUSAL>
__device__ __forceinline__ int ws_n_kv(int L, int q0) {  // key tiles a query tile starting at row q0 reads
    return ((CAUSAL ? min(L, q0 + BM) : L) + BN - 1) / BN;
}

// Producer: one thread loads each round's Q tile, then streams K and V through the ring.
template <class S, int BN, int STAGES, bool CAUSAL>
__device__ __forceinline__ void ws_producer(const WsSmem<S, STAGES>& sm, const WsWork& w, const TmaDesc& tm_q,
                                            const TmaDesc& tm_k, const TmaDesc& tm_v) {
    tma_prefetch_desc(tm_q);
    tma_prefetch_desc(tm_k);
    tma_prefetch_desc(tm_v);
    int t = 0;  // K/V tiles issued so far, over all rounds: the ring's position
    for (int r = 0; r < w.rounds; ++r) {
        const int qb = r % S::QBUF, q0 = (w.first + r) * S::BM;
        if (r >= S::QBUF) mbar_wait(sm.q_empty(qb), ((r - S::QBUF) / S::QBUF) & 1);  // round r - QBUF's epilogue is done
        mbar_arrive_expect_tx(sm.q_full(qb), S::Q_BYTES);
#pragma unroll
        for (int g = 0; g < S::NREG; ++g)
            tma_load_3d(sm.sQ + qb * S::Q_BYTES + g * S::BM * 128, tm_q, 64 * g, w.head, w.seg_start + q0, sm.q_full(qb));
        const int n_kv = ws_n_kv<S::BM, BN, CAUSAL>(w.L, q0);
        for (int j = 0; j < n_kv; ++j, ++t) {
            const int st = t % STAGES;
            const u32 ph = ((t / STAGES) & 1) ^ 1;  // the consumers' release of this stage's previous tile
            const int row = w.seg_start + j * BN;
            mbar_wait(sm.k_empty(st), ph);
            mbar_arrive_expect_tx(sm.k_full(st), S::KV_BYTES);
#pragma unroll
            for (int g = 0; g < S::NREG; ++g)
                tma_load_3d(sm.sK + st * S::KV_BYTES + g * BN * 128, tm_k, 64 * g, w.kvh, row, sm.k_full(st));
            mbar_wait(sm.v_empty(st), ph);
            mbar_arrive_expect_tx(sm.v_full(st), S::KV_BYTES);
#pragma unroll
            for (int g = 0; g < S::NREG; ++g)
                tma_load_3d(sm.sV + st * S::KV_BYTES + g * BN * 128, tm_v, 64 * g, w.kvh, row, sm.v_full(st));
        }
    }
}

// S = Q K^T on one stage: k-step ks reads region ks / 4 of Q and K at 32 (ks % 4) bytes into each row (descriptor
// addresses count 16-byte units).
template <bool BF16, class S, int BN>
__device__ __forceinline__ void ws_issue_qk(float (&sf)[BN / 2], unsigned long long dq, unsigned long long dk) {
#pragma unroll
    for (int ks = 0; ks < S::DK / 16; ++ks)
        Wgmma<BN>::template ss<BF16>(sf, dq + (ks >> 2) * (S::BM * 128 >> 4) + (ks & 3) * 2,
                                     dk + (ks >> 2) * (BN * 128 >> 4) + (ks & 3) * 2, ks > 0);
}

// O += P V on one stage: k-step kb2 is 16 key rows = two 1024-byte atoms further; D = 256 as two n128 halves, the
// second one region (BN rows of 128 bytes) on.
template <bool BF16, int D, int BN, int KB>
__device__ __forceinline__ void ws_issue_pv(float (&of)[D / 2], const u32 (&pa)[KB][1][4], unsigned long long dv) {
#pragma unroll
    for (int kb2 = 0; kb2 < KB; ++kb2) {
        const unsigned long long db = dv + kb2 * (2048 >> 4);
        if constexpr (D == 256) {
            Wgmma<128>::template rs<BF16>(reinterpret_cast<float (&)[64]>(of[0]), pa[kb2][0], db);
            Wgmma<128>::template rs<BF16>(reinterpret_cast<float (&)[64]>(of[64]), pa[kb2][0], db + (2 * BN * 128 >> 4));
        } else {
            Wgmma<D>::template rs<BF16>(of, pa[kb2][0], db);
        }
    }
}

// Consumer warpgroup's epilogue of one round: O / l and lse for its rows of the tile at q0. When all 64 rows lie
// in the segment, O goes through this warpgroup's own rows of the Q buffer (free once its last QK is done) in the
// same swizzled layout, and out with one TMA copy per region; a partial last tile keeps per-thread stores (a copy
// of whole boxes would write rows of the next segment). Then each warp releases the Q buffer (warp 0's lane 0 only
// after its TMA store has read the O staged there): the producer may load the tile QBUF rounds on into it.
template <typename T, int D, class S, int STAGES>
__device__ __forceinline__ void ws_epilogue(const float (&acc)[1][D / 8][4], const float (&m_i)[1][2],
                                            const float (&l_i)[1][2], const WsSmem<S, STAGES>& sm, int r, int q0,
                                            const WsWork& w, int Hq, T* __restrict__ o, float* __restrict__ lse,
                                            const TmaDesc& tm_o, int wg, int warp, int lane) {
    constexpr int DB = S::DB;
    const int qb = r % S::QBUF;
    const int g = lane >> 2, t4 = lane & 3;
    const int wgrow0 = q0 + wg * 64;
    const int wrow0 = wgrow0 + (warp & 3) * 16;
    if (wgrow0 + 64 <= w.L) {
        const u32 so = sm.sQ + qb * S::Q_BYTES + wg * 64 * 128;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float l = quad_sum(l_i[0][h]);
            const float inv = 1.f / l;
            const int rr = (warp & 3) * 16 + g + 8 * h;  // row inside the warpgroup's 64
#pragma unroll
            for (int db = 0; db < DB; ++db) {
                const u32 addr = so + (db >> 3) * (S::BM * 128) + (rr >> 3) * 1024 + (rr & 7) * 128 +
                                 (((db & 7) ^ (rr & 7)) << 4) + 4 * t4;
                const u32 val = pack2<T>(acc[0][db][2 * h] * inv, acc[0][db][2 * h + 1] * inv);
                asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(val) : "memory");
            }
            if (lse != nullptr && t4 == 0)
                lse[(size_t)(w.seg_start + wgrow0 + rr) * Hq + w.head] = (m_i[0][h] + log2f(l)) * 0.69314718055994531f;
        }
        fence_proxy_async_shared();  // these writes, then the copy engine's reads
        bar_sync(1 + wg, 128);
        if ((threadIdx.x & 127) == 0) {  // lane 0 of the warpgroup's first warp
#pragma unroll
            for (int reg = 0; reg < S::NREG; ++reg)
                tma_store_3d(tm_o, 64 * reg, w.head, w.seg_start + wgrow0, so + reg * (S::BM * 128));
            tma_store_commit_and_wait_read();
        }
    } else if (wgrow0 < w.L) {
        store_rows<T, 1, DB, D>(acc, m_i, l_i, o, lse, w.seg_start, wrow0, w.L, Hq, w.head, g, t4);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(sm.q_empty(qb));
}

// Consumer warpgroup: for each of the CTA's rounds, O, m and l of its 64 rows of the round's query tile (per key
// tile j: S_j = Q K_j^T and O += P_{j-1} V_{j-1} as two asynchronous wgmma groups, the softmax of S_j while PV
// runs), then the epilogue. Key tiles it does not multiply (its rows lie past the segment, or causal tiles after
// its last row) still pass through it: it waits for each and releases it, so that the empty barriers count the
// releases of one tile at a time.
template <typename T, int D, class S, int BN, int STAGES, bool CAUSAL>
__device__ __forceinline__ void ws_consumer(const WsSmem<S, STAGES>& sm, const WsWork& w, int Hq, T* __restrict__ o,
                                            float* __restrict__ lse, const TmaDesc& tm_o, int wg, int warp, int lane,
                                            float scale_log2) {
    constexpr bool BF16 = IsBf16<T>::value;
    constexpr int NB = S::NB, KB = S::KB, DB = S::DB;
    const float NEG_INF = f32_neg_inf();
    const int g = lane >> 2, t4 = lane & 3;
    auto dk_of = [&](int st) { return make_desc_sw128(sm.sK + st * S::KV_BYTES, 16); };
    auto dv_of = [&](int st) { return make_desc_sw128(sm.sV + st * S::KV_BYTES, BN * 128); };
    auto release = [&](u32 bar) {  // this warp is done reading a stage
        if (lane == 0) mbar_arrive(bar);
    };
    float m_i[1][2], l_i[1][2];
    float acc[1][DB][4];
    float (&of)[D / 2] = reinterpret_cast<float (&)[D / 2]>(acc);
    float s[1][NB][4];
    float (&sf)[BN / 2] = reinterpret_cast<float (&)[BN / 2]>(s);
    u32 pa[KB][1][4];  // P of the previous key tile, packed: the A operand of PV, from registers

    int t0 = 0;  // the ring's position at the round's first key tile (as in the producer)
    for (int r = 0; r < w.rounds; ++r) {
        const int qb = r % S::QBUF, q0 = (w.first + r) * S::BM;
        const int n_kv = ws_n_kv<S::BM, BN, CAUSAL>(w.L, q0);
        const int L = w.L;  // the segment's length
        const int wgrow0 = q0 + wg * 64;             // first row of this warpgroup, local to the segment
        const int wrow0 = wgrow0 + (warp & 3) * 16;  // ... of this warp
        // key tiles this warpgroup multiplies: all of them, none if its rows lie past the segment, and (causal) only
        // those starting at or before its last row
        int n_my = wgrow0 < L ? n_kv : 0;
        if (CAUSAL && n_my > 0) n_my = min(n_kv, (wgrow0 + 63) / BN + 1);
        const unsigned long long dq = make_desc_sw128(sm.sQ + qb * S::Q_BYTES + wg * 64 * 128, 16);
        auto stage = [&](int j) { return (t0 + j) % STAGES; };
        auto phase = [&](int j) { return (u32)(((t0 + j) / STAGES) & 1); };

        m_i[0][0] = m_i[0][1] = NEG_INF;
        l_i[0][0] = l_i[0][1] = 0.f;
#pragma unroll
        for (int db = 0; db < DB; ++db) acc[0][db][0] = acc[0][db][1] = acc[0][db][2] = acc[0][db][3] = 0.f;

        if (n_my > 0) {
            // S_0 = Q K_0^T, softmax (O is still zero, so its rescale is skipped)
            mbar_wait(sm.q_full(qb), (r / S::QBUF) & 1);
            mbar_wait(sm.k_full(stage(0)), phase(0));
#pragma unroll
            for (int i = 0; i < BN / 2; ++i) reg_fence(sf[i]);
            wgmma_fence();
            ws_issue_qk<BF16, S, BN>(sf, dq, dk_of(stage(0)));
            wgmma_commit();
            wgmma_wait<0>();
#pragma unroll
            for (int i = 0; i < BN / 2; ++i) reg_fence(sf[i]);
            release(sm.k_empty(stage(0)));
            mask_tile<1, NB, CAUSAL>(s, wrow0, 0, L, g, t4);
            {
                float alpha[1][2];
                softmax_p<1, NB>(s, m_i, l_i, alpha, scale_log2);
            }
            for (int j = 1; j < n_my; ++j) {
                const int sk = stage(j), sv = stage(j - 1);
#pragma unroll
                for (int kb2 = 0; kb2 < KB; ++kb2) pack_p<T, 1, NB>(pa[kb2], s, kb2);
                mbar_wait(sm.k_full(sk), phase(j));
                mbar_wait(sm.v_full(sv), phase(j - 1));
#pragma unroll
                for (int i = 0; i < BN / 2; ++i) reg_fence(sf[i]);
#pragma unroll
                for (int i = 0; i < D / 2; ++i) reg_fence(of[i]);
                wgmma_fence();
                ws_issue_qk<BF16, S, BN>(sf, dq, dk_of(sk));
                wgmma_commit();
                ws_issue_pv<BF16, D, BN, KB>(of, pa, dv_of(sv));
                wgmma_commit();
                wgmma_wait<1>();  // S_j is ready; PV_{j-1} may still run
#pragma unroll
                for (int i = 0; i < BN / 2; ++i) reg_fence(sf[i]);
                release(sm.k_empty(sk));
                mask_tile<1, NB, CAUSAL>(s, wrow0, j * BN, L, g, t4);
                float alpha[1][2];
                const bool grew = softmax_p<1, NB>(s, m_i, l_i, alpha, scale_log2);
#pragma unroll
                for (int i = 0; i < BN / 2; ++i) reg_fence(sf[i]);
                // Wait for PV in both arms of a branch that depends on the softmax: ptxas hoists a wgmma wait to the
                // top of its basic block, which here would put it before the exponentials and serialise them with PV
                // (seen in the SASS: 0 MUFU.EX2 between the two waits with a single wait; 66 with this form).
                if (grew) {
                    wgmma_wait<0>();
#pragma unroll
                    for (int i = 0; i < D / 2; ++i) reg_fence(of[i]);
                    rescale_o<1, DB>(acc, alpha);
                } else {
                    wgmma_wait<0>();
#pragma unroll
                    for (int i = 0; i < D / 2; ++i) reg_fence(of[i]);
                }
                release(sm.v_empty(sv));
            }
            // O += P_{n-1} V_{n-1}
            const int sv = stage(n_my - 1);
#pragma unroll
            for (int kb2 = 0; kb2 < KB; ++kb2) pack_p<T, 1, NB>(pa[kb2], s, kb2);
            mbar_wait(sm.v_full(sv), phase(n_my - 1));
#pragma unroll
            for (int i = 0; i < D / 2; ++i) reg_fence(of[i]);
            wgmma_fence();
            ws_issue_pv<BF16, D, BN, KB>(of, pa, dv_of(sv));
            wgmma_commit();
            wgmma_wait<0>();
#pragma unroll
            for (int i = 0; i < D / 2; ++i) reg_fence(of[i]);
            release(sm.v_empty(sv));
        }
        for (int j = n_my; j < n_kv; ++j) {  // the tiles it does not multiply: wait, release
            const int st = stage(j);
            const u32 ph = phase(j);
            mbar_wait(sm.k_full(st), ph);
            release(sm.k_empty(st));
            mbar_wait(sm.v_full(st), ph);
            release(sm.v_empty(st));
        }
        ws_epilogue<T, D, S, STAGES>(acc, m_i, l_i, sm, r, q0, w, Hq, o, lse, tm_o, wg, warp, lane);
        t0 += n_kv;
    }
}

template <typename T, int D, int NCWG, int BN, int STAGES, bool CAUSAL>
__global__ void __launch_bounds__((NCWG + 1) * 128, 1)
attn_fwd_ws(T* __restrict__ o, float* __restrict__ lse, const int* __restrict__ cu, int nseg, int Hq, int Hkv,
            float scale_log2, int max_rounds, const __grid_constant__ TmaDesc tm_q,
            const __grid_constant__ TmaDesc tm_k, const __grid_constant__ TmaDesc tm_v,
            const __grid_constant__ TmaDesc tm_o) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using S = WsShape<D, NCWG, BN, STAGES>;
    constexpr int BM = S::BM;

    extern __shared__ unsigned char smem_raw[];
    __shared__ __align__(8) unsigned long long bars[2 * S::QBUF + 4 * STAGES];
    __shared__ int s_map[2];
    // the swizzle atoms need 1024-byte alignment (the host asks for 1024 bytes more than the tiles take)
    WsSmem<S, STAGES> sm;
    sm.sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
    sm.sK = sm.sQ + S::QBUF * S::Q_BYTES;
    sm.sV = sm.sK + STAGES * S::KV_BYTES;
    sm.bar0 = smem_u32(bars);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
    const int head = blockIdx.x % Hq;
    int tile = blockIdx.x / Hq;
    if (CAUSAL) tile = gridDim.x / Hq - 1 - tile;
    const int R = S::QBUF == 2 && !CAUSAL ? max_rounds : 1;  // tiles per CTA at most
    if (warp == 0) find_tile(cu, nseg, tile, lane, s_map, BM * R);
    if (tid == 32) {
        for (int b = 0; b < S::QBUF; ++b) {
            mbar_init(sm.q_full(b), 1);
            mbar_init(sm.q_empty(b), 4 * NCWG);
        }
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(sm.k_full(s), 1);
            mbar_init(sm.v_full(s), 1);
            mbar_init(sm.k_empty(s), 4 * NCWG);
            mbar_init(sm.v_empty(s), 4 * NCWG);
        }
        fence_mbarrier_init();  // visible to the copy engine
    }
    __syncthreads();  // barriers initialised, tile map written
    const int seg = s_map[0];
    if (seg < 0) return;  // uniform over the CTA
    WsWork w;
    w.seg_start = cu[seg];
    w.L = cu[seg + 1] - w.seg_start;
    w.first = s_map[1] * R;                                 // the CTA's first tile in the segment
    w.rounds = min(R, (w.L + BM - 1) / BM - w.first);       // ... and how many it runs, one after another
    w.head = head;
    w.kvh = head / (Hq / Hkv);

    if (wg == NCWG) {  // producer warpgroup: one thread issues every copy
        regs_dec<S::PRODUCER_REGS>();
        if (tid == NCWG * 128) ws_producer<S, BN, STAGES, CAUSAL>(sm, w, tm_q, tm_k, tm_v);
        return;
    }

    regs_inc<S::CONSUMER_REGS>();
    ws_consumer<T, D, S, BN, STAGES, CAUSAL>(sm, w, Hq, o, lse, tm_o, wg, warp, lane, scale_log2);
#endif
}

}  // namespace attn
