// Packed variable-length sequences: which segment a tile of a 1-D grid belongs to, found on the device, so the
// host needs no read of cu_seqlens. The host launches an upper bound on the tile count,
// floor((T + nseg * (BM - 1)) / BM) for BM-row tiles; tiles past the last one get segment -1 and exit.
#pragma once

namespace qkern {

// Which (segment, tile inside the segment) is tile number `tile` when segment s has ceil(len_s / BM) tiles:
// warp-wide prefix sums of the per-segment counts, 32 segments at a time. Called by one whole warp; lane 0
// writes {segment or -1 past the last tile, tile index inside the segment} to s_map[0..1].
__device__ __forceinline__ void find_tile(const int* __restrict__ cu, int nseg, int tile, int lane, int* s_map,
                                          int BM) {
    int base = 0, seg = -1, tl = 0;
    for (int c0 = 0; c0 < nseg; c0 += 32) {
        const int s = c0 + lane;
        const int cnt = s < nseg ? (cu[s + 1] - cu[s] + BM - 1) / BM : 0;
        int inc = cnt;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            const int y = __shfl_up_sync(0xffffffffu, inc, off);
            if (lane >= off) inc += y;
        }
        const int exc = inc - cnt;
        const unsigned hit = __ballot_sync(0xffffffffu, cnt > 0 && tile >= base + exc && tile < base + inc);
        if (hit) {
            const int src = __ffs(hit) - 1;
            seg = c0 + src;
            tl = tile - base - __shfl_sync(0xffffffffu, exc, src);
            break;
        }
        base += __shfl_sync(0xffffffffu, inc, 31);
    }
    if (lane == 0) { s_map[0] = seg; s_map[1] = tl; }
}

}  // namespace qkern
