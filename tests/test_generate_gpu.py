"""The prefill path on the kernels backend (GPU only): what time to first token depends on.

  * a text prompt is prepared and prefilled (in chunks cut inside rows too) without one host synchronisation
    (torch's sync debug mode set to error), and the chunked result equals one pass;
  * an image prompt (mRoPE ids before the tower, the tower timed by CUDA events, the prefill queued behind
    it) gives the reference backend's logits and greedy tokens in fp32, and its timings add up.
The model is the tiny random checkpoint of tests/test_lm_kernels.py (real per-head widths).
"""

from __future__ import annotations

import pytest
import torch

from tests._lm_gpu import TINY_DENSE, TinyModels, rows_batch

pytestmark = pytest.mark.gpu

RAW = TINY_DENSE
model_for = TinyModels(RAW)


def test_text_prefill_never_waits_for_the_device():
    m = model_for("kernels")
    _, ids, mask = rows_batch()  # 3 rows of 37, 12 and 64 tokens
    m.generate_ids(ids, attention_mask=mask, max_new_tokens=1, eos_token_ids=[])  # compiles, allocates
    b = m._prepare(ids, mask, None, None, None, None)
    lengths = b.lengths + [0]  # an idle 4th row, as in a decode bucket
    one = m.lm.prefill(m.lm.new_cache(4, 128), b.embeds, b.positions, lengths)
    cache = m.lm.new_cache(4, 128)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising torch call raises
    try:
        b = m._prepare(ids, mask, None, None, None, None)
        h = m.lm.prefill(cache, b.embeds, b.positions, lengths, chunk_size=50)  # chunks cut inside rows
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert cache.lengths.tolist() == lengths
    err = float((h - one).abs().max() / one.abs().max())
    assert err < 1e-4, f"chunked prefill differs from one pass: max rel diff {err:.2e}"


def _image_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    grid = (1, 4, 6)  # 24 patches -> 6 merged tokens
    text = lambda n: torch.randint(0, 500, (n,), generator=g).tolist()  # noqa: E731
    rows = [text(5) + [502] + [500] * 6 + [503] + text(7), text(9)]
    S = max(map(len, rows))
    ids = torch.zeros(2, S, dtype=torch.long)
    mask = torch.zeros(2, S, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, S - len(r):] = torch.tensor(r)
        mask[b, S - len(r):] = 1
    pixels = torch.randn(24, 1536, generator=g)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=torch.tensor([grid]))


def test_image_prompt_matches_reference_fp32():
    case = _image_case()
    ref_m, m = model_for("reference"), model_for("kernels")
    ref = ref_m.logits(**case).float()
    got = m.logits(**case).float()
    real = case["attention_mask"].bool().cuda()
    err = float((got[real] - ref[real]).abs().max() / ref[real].abs().max())
    assert err < 1e-3, f"image prompt logits: max rel diff {err:.2e}"
    want = ref_m.generate_ids(**case, max_new_tokens=8, eos_token_ids=[])
    for _ in range(2):  # the second run replays the tower's graph and reuses the decode session
        out = m.generate_ids(**case, max_new_tokens=8, eos_token_ids=[])
        assert torch.equal(out, want), f"\nours {out.tolist()}\nref  {want.tolist()}"
        t = m.last_timings
        assert t["vision_ms"] > 0 and t["prefill_ms"] > 0
        assert t["ttft_ms"] == pytest.approx(t["vision_ms"] + t["prefill_ms"])


def test_scatter_without_host_check_equals_checked():
    """validate=False (the model counts the placeholders on the host) copies the same rows, bit for bit, with no
    host synchronisation; validate=True still refuses a wrong count."""
    from kernels.glue import scatter_image_embeds

    g = torch.Generator(device="cuda").manual_seed(0)
    tok = torch.randn(40, 24, device="cuda", generator=g).to(torch.bfloat16)
    mask = torch.zeros(40, dtype=torch.bool, device="cuda")
    mask[5:17] = True
    mask[30] = True
    img = torch.randn(13, 24, device="cuda", generator=g).to(torch.bfloat16)
    want = scatter_image_embeds(tok, img, mask)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = scatter_image_embeds(tok, img, mask, validate=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="marks 13 positions"):
        scatter_image_embeds(tok, img[:12], mask)


def test_graphed_prefill_equals_eager_and_reference():
    """model.prefill_graph: the first prefill of a bucket runs eagerly on the padded buffers and captures, later
    ones replay; rows of other lengths in the same bucket (different cu_seqlens, same graph) and an idle row
    give the eager prefill's states and the reference backend's fp32 greedy tokens."""
    from model.prefill_graph import PrefillGraphs, bucket

    ref_m, m = model_for("reference"), model_for("kernels")
    default, g = m.prefill_graphs, PrefillGraphs()
    assert default is not None  # on by default with cuda_graphs
    try:
        for lengths in ((37, 12, 64), (40, 9, 64), (5, 100, 8)):  # 113 tokens each: one bucket
            assert bucket(sum(lengths)) == bucket(113)
            _, ids, mask = rows_batch(lengths, seed=sum(lengths[:1]))
            want = ref_m.generate_ids(ids, attention_mask=mask, max_new_tokens=8, eos_token_ids=[])
            b = m._prepare(ids, mask, None, None, None, None)
            eager_cache, graph_cache = m.lm.new_cache(4, 128), m.lm.new_cache(4, 128)
            h0 = m.lm.prefill(eager_cache, b.embeds, b.positions, b.lengths + [0])
            for _ in range(2):
                graph_cache.reset()
                h = m.lm.prefill(graph_cache, b.embeds, b.positions, b.lengths + [0], graphs=g)
                assert float((h - h0).abs().max() / h0.abs().max()) < 1e-5
                assert graph_cache.lengths.tolist() == b.lengths + [0]
                for i in graph_cache.recurrent:
                    st, st0 = graph_cache.recurrent[i], eager_cache.recurrent[i]
                    assert float((st - st0).abs().max() / st0.abs().max()) < 1e-5
                    cv, cv0 = graph_cache.conv[i], eager_cache.conv[i]
                    assert float((cv - cv0).abs().max() / cv0.abs().max()) < 1e-5
            m.prefill_graphs = g
            got = m.generate_ids(ids, attention_mask=mask, max_new_tokens=8, eos_token_ids=[])
            m.prefill_graphs = default
            assert torch.equal(got, want), f"\nours {got.tolist()}\nref  {want.tolist()}"
    finally:
        m.prefill_graphs = default
    # one graph per cache: the three test caches' (captured, then replayed once) and the decode session's (captured
    # by the first generate, replayed by the next two)
    assert (g.captures, g.replays) == (4, 5)


def test_reused_session_rows_starting_in_a_later_chunk():
    """The states of a reused session are not cleared: a prefill's first pass starts from zero states and writes
    every row's, so rows that begin only in the second chunk (empty in the first) must still start from zero."""
    ref_m, m = model_for("reference"), model_for("kernels")
    m.prefill_chunk = ref_m.prefill_chunk = 50
    try:
        _, ids0, mask0 = rows_batch((64, 40, 20), seed=3)
        m.generate_ids(ids0, attention_mask=mask0, max_new_tokens=4, eos_token_ids=[])  # dirties the states
        _, ids, mask = rows_batch((60, 12, 30), seed=4)  # cu = [0, 60, 72, 102]: rows 1, 2 begin in chunk 2
        want = ref_m.generate_ids(ids, attention_mask=mask, max_new_tokens=8, eos_token_ids=[])
        got = m.generate_ids(ids, attention_mask=mask, max_new_tokens=8, eos_token_ids=[])
        assert len(m._sessions) == 1  # the same session (batch bucket 4, capacity 256) both times
        assert torch.equal(got, want), f"\nours {got.tolist()}\nref  {want.tolist()}"
    finally:
        m.prefill_chunk = ref_m.prefill_chunk = 8192
