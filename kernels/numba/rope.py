"""Numba kernel for the mRoPE position ids (rope_index). An index op, exact.

The sequential walk of reference.rope_index becomes a per-token formula from two prefix counts (torch.cumsum
of the image / video pad flags):
  * delta_g = max(H', W') - n_g for each grid g (an image, or one frame of a video: videos are split into
    t=1 frames), where n_g is its token count and H', W' the merged grid;
  * A(i) = sum of delta_g over the grids that start before token i (a grid of one kind has started iff the
    number of its pads before i exceeds the grid's first ordinal);
  * a text token gets i + A(i) on all three axes; a pad at index k of its grid (which starts at i - k) gets
    (i - k) + A(i - k) + (ti, y, x), (ti, y, x) being k in raster order of the grid.
A pad whose grid does not lie on consecutive pads (or past the grids' total) is flagged through `err`
(atomic min of the token index), which the wrapper (kernels.rope.rope_index) turns into a ValueError.
"""

from __future__ import annotations

from numba import cuda


@cuda.jit(device=True)
def image_part(grid, n_img, merge, e):
    """(sum of delta over images whose first ordinal is < e, image holding ordinal e or n_img, its first ordinal)."""
    acc = 0
    hit = n_img
    hit_off = 0
    off = 0
    for g in range(n_img):
        gh = grid[3 * g + 1] // merge
        gw = grid[3 * g + 2] // merge
        n = grid[3 * g] * gh * gw
        if e > off:
            acc += max(gh, gw) - n
        if off <= e < off + n:
            hit = g
            hit_off = off
        off += n
    return acc, hit, hit_off


@cuda.jit(device=True)
def video_part(grid, n_vid, merge, e):
    """(sum of delta over video frames whose first ordinal is < e, video holding ordinal e or n_vid, its first
    ordinal)."""
    acc = 0
    hit = n_vid
    hit_off = 0
    off = 0
    for v in range(n_vid):
        t = grid[3 * v]
        gh = grid[3 * v + 1] // merge
        gw = grid[3 * v + 2] // merge
        nf = gh * gw
        x = e - off
        if x > 0:
            acc += min((x + nf - 1) // nf, t) * (max(gh, gw) - nf)
        if off <= e < off + t * nf:
            hit = v
            hit_off = off
        off += t * nf
    return acc, hit, hit_off


@cuda.jit
def rope_index_kernel(ids, cimg, cvid, img_grid, n_img, vid_grid, n_vid, img_tok, vid_tok, merge, pos, err):
    """ids [S]; cimg, cvid: inclusive prefix counts of image / video pads [S]; grids flat [n*3];
    pos int64 flat [3, S]; err int64 [1] (S on entry; lowered to the first malformed pad's index)."""
    s_len = ids.shape[0]
    for i in range(cuda.grid(1), s_len, cuda.gridsize(1)):
        tok = ids[i]
        is_img = tok == img_tok
        is_vid = tok == vid_tok
        e_img = cimg[i] - (1 if is_img else 0)  # pads of each kind strictly before i
        e_vid = cvid[i] - (1 if is_vid else 0)
        k = 0  # index of token i inside its grid (0 for text)
        ti = 0
        y = 0
        x = 0
        bad = False
        if is_img:
            _, g, off = image_part(img_grid, n_img, merge, e_img)
            if g == n_img:
                bad = True
            else:
                gh = img_grid[3 * g + 1] // merge
                gw = img_grid[3 * g + 2] // merge
                k = e_img - off
                ti = k // (gh * gw)
                y = (k // gw) % gh
                x = k % gw
        elif is_vid:
            _, v, off = video_part(vid_grid, n_vid, merge, e_vid)
            if v == n_vid:
                bad = True
            else:
                gh = vid_grid[3 * v + 1] // merge
                gw = vid_grid[3 * v + 2] // merge
                k = (e_vid - off) % (gh * gw)  # index inside its frame
                y = k // gw
                x = k % gw
        if k > 0 and ids[i - 1] != tok:  # a grid must cover consecutive pads
            bad = True
        if bad:
            cuda.atomic.min(err, 0, i)
            pos[i] = 0
            pos[s_len + i] = 0
            pos[2 * s_len + i] = 0
            continue
        # A(i - k): grid starts are counted at the grid's first token; for the other kind the count of pads
        # before i - k equals the count before i, because the grid's tokens are consecutive
        a_img, _, _ = image_part(img_grid, n_img, merge, e_img - (k if is_img else 0))
        a_vid, _, _ = video_part(vid_grid, n_vid, merge, e_vid - (k if is_vid else 0))
        base = i - k + a_img + a_vid
        pos[i] = base + ti
        pos[s_len + i] = base + y
        pos[2 * s_len + i] = base + x
