"""Inputs of the vision family (patch_embed, vision_pos_taps, add_pos_embed, vision_rope_cos_sin, vision_cu_seqlens):
builders, strategies, real shapes, bad inputs, peers. Found by name from kernels.registry."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

import reference
from . import Bad, Case, act, dtypes, per_size, real_widths, rows, seeds, widths

VIT_WIDTHS = (768, 1024, 1152)
POS_TABLE_ROWS = 2304                 # 48 x 48
PATCH = 1536                          # 3 channels x 2 frames x 16 x 16


# ------------------------------------------------------------------------------------------------ grids
def grid_rows(max_side: int, max_t: int):
    """(t, h, w) with h, w multiples of 2 (merge), 2 included: the smallest grid the merger accepts."""
    side = st.sampled_from([s for s in (2, 4, 6, 8, 10, 16) if s <= max_side])
    return st.tuples(st.integers(1, max_t), side, side)


@st.composite
def grids(draw, max_patches: int = 64, max_t: int = 3):
    """Several images / videos packed, <= max_patches patches in all (the first grid always fits), int32/int64."""
    drawn = draw(st.lists(grid_rows(8, max_t), min_size=1, max_size=4))
    kept, total = [], 0
    for t, h, w in drawn:
        if kept and total + t * h * w > max_patches:
            break
        kept.append((t, h, w) if t * h * w <= max_patches else (1, 2, 2 * (max_patches // 4)))
        total += t * kept[-1][1] * kept[-1][2]
    return torch.tensor(kept, dtype=draw(st.sampled_from((torch.int32, torch.int64))))


def _square_grid(tokens: int) -> torch.Tensor:
    side = max(2, 2 * round(tokens ** 0.5 / 2))
    return torch.tensor([[1, side, side]])


def _n(grid) -> int:
    return int(grid.prod(1).sum())


# ------------------------------------------------------------------------------------------------ patch_embed
def build_patch_embed(n, d, dtype, seed=0, with_bias=True) -> Case:
    g = torch.Generator().manual_seed(seed)
    pv = torch.randn(n, PATCH, generator=g).to(dtype)
    w = (torch.randn(d, 3, 2, 16, 16, generator=g) / 40).to(dtype)
    b = torch.randn(d, generator=g).to(dtype) if with_bias else None
    return Case("patch_embed", (pv, w, b), (((n, d), dtype),), f"{n}x{PATCH}->{d}")


@st.composite
def _patch_embed(draw, small):
    return build_patch_embed(draw(st.integers(1, 700)), draw(st.sampled_from([8, 72, 768, 1024, 1152])),
                             draw(dtypes(small)), draw(seeds), draw(st.booleans()))


def patch_embed_cases(small: bool = False):
    return _patch_embed(small)


def patch_embed_example(dtype=torch.bfloat16) -> Case:
    return build_patch_embed(4, 8, dtype)


def patch_embed_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    return per_size(("vit_hidden",), lambda d: build_patch_embed(tokens, d, dtype))


def patch_embed_bad(device) -> list[Bad]:
    pv, w, _ = patch_embed_example(torch.float32).on(device)
    return [
        Bad("pixel_values width", (torch.zeros(4, 1000, device=device), w, None), "pixel_values"),
        Bad("weight rank", (pv, w.reshape(8, -1), None), "weight"),
        Bad("bias shape", (pv, w, torch.zeros(7, device=device)), "bias"),
        Bad("weight fp64", (pv, w.double(), None), "weight"),
    ]


def patch_embed_peers(args) -> dict:
    pv, w, b = args
    conv = torch.nn.Conv3d(3, w.shape[0], (2, 16, 16), stride=(2, 16, 16), bias=b is not None).to(pv.device, pv.dtype)
    with torch.no_grad():
        conv.weight.copy_(w)
        if b is not None:
            conv.bias.copy_(b)
    x = pv.view(-1, 3, 2, 16, 16)
    return {"torch conv3d (HF)": lambda: conv(x).view(-1, w.shape[0])}


# ------------------------------------------------------------------------------------------------ vision_pos_taps
def build_vision_pos_taps(grid, side=48, hint=False) -> Case:
    n = _n(grid)
    return Case("vision_pos_taps", (grid, side), (((4, n), torch.int32), ((4, n), torch.float32)),
                f"{grid.tolist()}-side{side}", {"num_patches": n} if hint else {})


@st.composite
def _vision_pos_taps(draw, small):
    return build_vision_pos_taps(draw(grids()), draw(st.sampled_from((48, 2, 5))), draw(st.booleans()))


def vision_pos_taps_cases(small: bool = False):
    return _vision_pos_taps(small)


def vision_pos_taps_example(dtype=None) -> Case:
    return build_vision_pos_taps(torch.tensor([[1, 2, 4]]))


def vision_pos_taps_real(dtype=None, tokens: int = 4096) -> list[Case]:
    return [build_vision_pos_taps(_square_grid(tokens), hint=True)]


def _grid_bad(op: str, device, extra: tuple) -> list[Bad]:
    ok = torch.tensor([[1, 2, 4]], device=device)
    bad = [
        Bad("grid not a tensor", ([[1, 2, 4]], *extra), "grid_thw", TypeError, reference=True),
        Bad("grid float", (ok.float(), *extra), "grid_thw.*dtype", reference=True),
        Bad("grid shape", (ok[:, :2], *extra), r"grid_thw.*\(n, 3\)|grid_thw.*shape", reference=True),
        Bad("grid empty", (ok[:0], *extra), "grid_thw.*at least one", reference=True),
        Bad("grid zero", (torch.tensor([[1, 0, 4]], device=device), *extra), "grid_thw.*positive", reference=True),
        Bad("grid strided", (torch.tensor([[1, 1], [2, 2], [4, 4]], device=device).t(), *extra),
            "grid_thw.*contiguous"),
    ]
    if op != "vision_cu_seqlens":  # segments don't care about the merge blocks
        bad += [Bad("grid not mergeable", (torch.tensor([[1, 3, 4]], device=device), *extra),
                    "grid_thw.*multiples of merge", reference=True),
                Bad("merge 0", (ok, *extra), "merge", kwargs={"merge": 0}, reference=True)]
    return bad


def vision_pos_taps_bad(device) -> list[Bad]:
    g = torch.tensor([[2, 2, 4]], device=device)
    idx, w = torch.empty(4, 8, dtype=torch.int32, device=device), torch.empty(4, 8, device=device)
    g1 = torch.tensor([[1, 2, 4]], device=device)  # 8 patches
    return _grid_bad("vision_pos_taps", device, ()) + [
        Bad("side 0", (g, 0), "side", reference=True),
        Bad("num_patches negative", (g,), "num_patches", kwargs={"num_patches": -1}),
        Bad("num_patches float", (g,), "num_patches", kwargs={"num_patches": 16.0}),
        Bad("out not a tuple", (g1,), "out must be a tuple", kwargs={"out": idx}),
        Bad("out index shape", (g1,), r"out \(index\).*shape", kwargs={"out": (idx[:, :7], w)}),
        Bad("out weight dtype", (g1,), r"out \(weight\).*dtype", kwargs={"out": (idx, w.double())}),
    ]


# ------------------------------------------------------------------------------------------------ add_pos_embed
def build_add_pos_embed(n, d, dtype, seed=0, scale=1.0, table_rows=POS_TABLE_ROWS, grid=None) -> Case:
    """Random taps into a table of `table_rows` rows; or, with grid=(t, h, w) (n is then t*h*w), the real
    bilinear taps of that patch grid into the 48 x 48 table (neighbouring tokens share table rows)."""
    g = torch.Generator().manual_seed(seed)
    if grid is not None:
        index, weight = reference.vision_pos_taps(torch.tensor([grid]))
        n, table_rows = index.shape[1], POS_TABLE_ROWS
    else:
        index = torch.randint(0, table_rows, (4, n), generator=g, dtype=torch.int32)
        weight = torch.rand((4, n), generator=g)
        weight = weight / weight.sum(0, keepdim=True)  # bilinear weights sum to 1
    x = act(g, (n, d), dtype, scale)
    table = act(g, (table_rows, d), dtype, scale)
    label = f"{n}x{d}-" + (f"grid{grid[1]}x{grid[2]}" if grid else f"t{table_rows}")
    return Case("add_pos_embed", (x, table, index, weight), (((n, d), dtype),), label)


@st.composite
def _add_pos_embed(draw, small):
    return build_add_pos_embed(draw(rows(small)), draw(widths(VIT_WIDTHS, small)), draw(dtypes(small)), draw(seeds),
                               draw(st.sampled_from((0.1, 1.0, 10.0))),
                               table_rows=draw(st.sampled_from((1, 5, POS_TABLE_ROWS))))


def add_pos_embed_cases(small: bool = False):
    return _add_pos_embed(small)


def add_pos_embed_example(dtype=torch.bfloat16) -> Case:
    return build_add_pos_embed(3, 40, dtype, table_rows=5)


def add_pos_embed_real(dtype=torch.bfloat16, tokens: int = 4096) -> list[Case]:
    """The real taps of a square image of `tokens` patches."""
    side = int(_square_grid(tokens)[0, 1])
    return per_size(("vit_hidden",), lambda d: build_add_pos_embed(0, d, dtype, seed=d, grid=(1, side, side)))


def add_pos_embed_bad(device) -> list[Bad]:
    x, table, index, weight = add_pos_embed_example().on(device)
    return [
        Bad("table shape", (x, table[:, :-1].contiguous(), index, weight), "table must have shape"),
        Bad("table dtype", (x, table.half(), index, weight), "table must have the input dtype"),
        Bad("index dtype", (x, table, index.long(), weight), "index must have dtype"),
        Bad("index shape", (x, table, index[:, :-1].contiguous(), weight), "index must have shape"),
        Bad("weight dtype", (x, table, index, weight.double()), "weight must have dtype"),
        Bad("x fp64", (x.double(), table, index, weight), "x must have dtype"),
        Bad("x int", (x.int(), table, index, weight), "x must have dtype"),
        Bad("x strided", (x.t().contiguous().t(), table, index, weight), "x must be contiguous"),
        Bad("x 1-D", (x.reshape(-1), table, index, weight), "x must have 2 dimensions"),
    ]


def add_pos_embed_peers(args) -> dict:
    x, table, index, weight = args
    w = weight.to(x.dtype)[..., None]
    return {"torch": lambda: x + (table[index] * w).sum(0)}


# ------------------------------------------------------------------------------------------------ vision_rope_cos_sin
def build_vision_rope_cos_sin(grid, head_dim, theta=1e4, hint=False) -> Case:
    n = _n(grid)
    return Case("vision_rope_cos_sin", (grid, head_dim, theta), (((n, head_dim // 2), torch.float32),) * 2,
                f"{grid.tolist()}-hd{head_dim}", {"num_patches": n} if hint else {})


@st.composite
def _vision_rope_cos_sin(draw, small):
    hd = draw(st.sampled_from((4, 8, 12, 16) if small else (4, 16, 64, 72, 80, 128)))
    return build_vision_rope_cos_sin(draw(grids()), hd, draw(st.sampled_from((1e4, 100.0))), draw(st.booleans()))


def vision_rope_cos_sin_cases(small: bool = False):
    return _vision_rope_cos_sin(small)


def vision_rope_cos_sin_example(dtype=None) -> Case:
    return build_vision_rope_cos_sin(torch.tensor([[1, 2, 4]]), 8)


def vision_rope_cos_sin_real(dtype=None, tokens: int = 4096) -> list[Case]:
    return [build_vision_rope_cos_sin(_square_grid(tokens), d // h, hint=True)
            for _, (d, h) in real_widths("vit_hidden", "vit_heads")]


def vision_rope_cos_sin_bad(device) -> list[Bad]:
    g = torch.tensor([[2, 2, 4]], device=device)
    return _grid_bad("vision_rope_cos_sin", device, (8,)) + [
        Bad("head_dim not a multiple of 4", (g, 10), "head_dim.*multiple of 4", reference=True),
        Bad("head_dim 0", (g, 0), "head_dim", reference=True),
        Bad("theta negative", (g, 8, -1.0), "theta"),
    ]


# ------------------------------------------------------------------------------------------------ vision_cu_seqlens
def build_vision_cu_seqlens(grid, hint=False) -> Case:
    n_seg = int(grid[:, 0].sum())
    return Case("vision_cu_seqlens", (grid,), (((n_seg + 1,), torch.int32),), str(grid.tolist()),
                {"num_segments": n_seg} if hint else {})


@st.composite
def _vision_cu_seqlens(draw, small):
    return build_vision_cu_seqlens(draw(grids(max_patches=400, max_t=6)), draw(st.booleans()))


def vision_cu_seqlens_cases(small: bool = False):
    return _vision_cu_seqlens(small)


def vision_cu_seqlens_example(dtype=None) -> Case:
    return build_vision_cu_seqlens(torch.tensor([[2, 2, 4], [1, 4, 4]]))


def vision_cu_seqlens_real(dtype=None, tokens: int = 4096) -> list[Case]:
    return [build_vision_cu_seqlens(torch.tensor([[1, 28, 28]] * 8), hint=True)]  # 8 images of 448 x 448


def vision_cu_seqlens_bad(device) -> list[Bad]:
    g = torch.tensor([[2, 2, 4]], device=device)
    return _grid_bad("vision_cu_seqlens", device, ()) + [
        Bad("num_segments negative", (g,), "num_segments", kwargs={"num_segments": -2}),
        Bad("out dtype", (g,), "out.*dtype", kwargs={"out": torch.empty(3, dtype=torch.int64, device=device)}),
    ]

