"""Chunked prefill, the static-cache decode step, on-device sampling and stopping (CPU, reference ops, fp32).

Independent formulations: the one-pass forward over whole sequences (`Model.logits`, itself checked against
HF in test_model_parity.py) is the spec for both the chunked prefill and the decode step (teacher-forced: the
decode step's logits for token j equal the one-pass logits of the prompt + tokens so far); running each row
alone is the spec for a batch.
"""

from __future__ import annotations

import pytest
import torch

import model as M
from model.generate import (DecodeSession, Sampling, batch_bucket, capacity_bucket, filter_logits, select_tokens,
                            stop_update)
from tests._tiny_hf import (dense_untied, image_tokens, left_pad, moe, one_torch_thread, pixels,  # noqa: F401
                            rand_text)

_MODELS: dict = {}
REL = 1e-5  # fp32: chunked / incremental against one pass (different summation order only)


def ours(ckpt) -> M.Model:
    key = str(ckpt.path)
    if key not in _MODELS:
        _MODELS[key] = M.load(ckpt.path)
    m = _MODELS[key]
    m.cuda_graphs, m.decode_block, m.prefill_chunk = False, 8, 8192
    return m


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def batch_case(seed=0):
    """Three rows of different lengths, the middle one with an image (so its rope_delta is not 0)."""
    g = torch.Generator().manual_seed(seed)
    grid = (1, 4, 6)
    rows = [rand_text(9, g), rand_text(3, g) + image_tokens(grid) + rand_text(2, g), rand_text(4, g)]
    ids, mask = left_pad(rows)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels([grid], g),
                image_grid_thw=torch.tensor([grid])), rows


def prepared(m, case):
    return m._prepare(case["input_ids"], case["attention_mask"], case.get("pixel_values"),
                      case.get("image_grid_thw"), None, None)


@pytest.mark.parametrize("ckpt_name", ["dense_untied", "moe"])
def test_chunked_prefill_equals_one_pass(request, ckpt_name):
    m = ours(request.getfixturevalue(ckpt_name))
    case, rows = batch_case()
    full = m.logits(**case)  # [B, S, V]
    last = full[:, -1]  # left padding: every row's last token is at S-1
    b = prepared(m, case)
    states = {}
    for chunk in (1, 4, 7, 10_000):  # cuts inside rows, at row ends, and none
        cache = m.lm.new_cache(len(rows), 64)
        cache.rope_delta.copy_(b.rope_delta)
        h = m.lm.prefill(cache, b.embeds, b.positions, b.lengths, chunk_size=chunk)
        assert rel(m.lm.head(h), last) < REL, chunk
        assert cache.lengths.tolist() == b.lengths
        states[chunk] = cache
    ref = states[10_000]
    for chunk, c in states.items():  # the carried state is the same however the prompt was cut
        for i in ref.conv:
            assert rel(c.conv[i], ref.conv[i]) < REL and rel(c.recurrent[i], ref.recurrent[i]) < REL
        for i in ref.k:
            for r, n in enumerate(b.lengths):
                assert rel(c.k[i][r, :n], ref.k[i][r, :n]) < REL and rel(c.v[i][r, :n], ref.v[i][r, :n]) < REL


def test_prefill_rejects_bad_arguments(dense_untied):
    m = ours(dense_untied)
    case, rows = batch_case()
    b = prepared(m, case)
    cache = m.lm.new_cache(len(rows), 64)
    with pytest.raises(ValueError, match="chunk_size"):
        m.lm.prefill(cache, b.embeds, b.positions, b.lengths, chunk_size=0)
    with pytest.raises(ValueError, match="rows"):
        m.lm.prefill(m.lm.new_cache(2, 64), b.embeds, b.positions, b.lengths)
    with pytest.raises(ValueError, match="capacity"):
        m.lm.prefill(m.lm.new_cache(len(rows), 8), b.embeds, b.positions, b.lengths)


@pytest.mark.parametrize("ckpt_name", ["dense_untied", "moe"])
def test_decode_step_equals_one_pass_logits(request, ckpt_name):
    """Teacher forcing: after a chunked prefill, decode step j's logits = one-pass logits of prompt + j tokens."""
    m = ours(request.getfixturevalue(ckpt_name))
    case, rows = batch_case(1)
    b = prepared(m, case)
    B, n = len(rows), 5
    cache = m.lm.new_cache(B, 32)
    cache.rope_delta.copy_(b.rope_delta)
    h = m.lm.prefill(cache, b.embeds, b.positions, b.lengths, chunk_size=6)
    forced = torch.randint(0, 300, (B, n), generator=torch.Generator().manual_seed(7))
    steps = [m.lm.head(m.lm.decode_step(cache, forced[:, j])) for j in range(n)]
    assert cache.lengths.tolist() == [L + n for L in b.lengths]
    ids, mask = left_pad([r + forced[i].tolist() for i, r in enumerate(rows)])
    full = m.logits(ids, attention_mask=mask, pixel_values=case["pixel_values"], image_grid_thw=case["image_grid_thw"])
    S = ids.shape[1]
    assert rel(m.lm.head(h), full[:, S - n - 1]) < REL
    for j in range(n):
        assert rel(steps[j], full[:, S - n + j]) < REL, j


def test_rows_alone_equal_rows_in_a_batch_with_early_stop(dense_untied):
    """Rows of different lengths; one row hits eos early and stays finished (pad), the others go on: each row's
    tokens equal the row generated alone; the loop ends when every row has stopped."""
    m = ours(dense_untied)
    case, rows = batch_case(2)
    free = m.generate_ids(**case, max_new_tokens=10)
    S = case["input_ids"].shape[1]
    eos, pad = int(free[1, S + 2]), 311  # row 1 stops at its 3rd token (or earlier)
    got = m.generate_ids(**case, max_new_tokens=10, eos_token_ids=[eos], pad_token_id=pad)
    new = got[:, S:].tolist()
    first = new[1].index(eos)
    assert first <= 2 and all(t == pad for t in new[1][first + 1:])
    grid_of = {1: case["image_grid_thw"]}
    for r, row in enumerate(rows):
        kw = dict(pixel_values=case["pixel_values"], image_grid_thw=grid_of[r]) if r in grid_of else {}
        alone = m.generate_ids(torch.tensor([row]), max_new_tokens=10, eos_token_ids=[eos], pad_token_id=pad, **kw)
        alone = alone[0, len(row):].tolist()
        assert new[r][: len(alone)] == alone, r
        assert all(t == pad for t in new[r][len(alone):])  # a row that stopped alone is padded in the batch
        if eos in alone:
            assert alone.index(eos) == len(alone) - 1
    ends = [t.index(eos) + 1 if eos in t else 10 for t in new]
    assert len(new[0]) == max(ends)  # ended when the last row stopped (or at max_new_tokens)


def test_block_size_and_bucket_padding_do_not_change_tokens(dense_untied):
    m = ours(dense_untied)
    case, _ = batch_case(3)
    ref = m.generate_ids(**case, max_new_tokens=9)
    for block in (1, 3, 16):
        m.decode_block = block
        assert torch.equal(m.generate_ids(**case, max_new_tokens=9), ref), block
    m.decode_block = 8
    m.cuda_graphs = True  # on the CPU: the batch is padded to its bucket (3 -> 4 rows) but the step runs eagerly
    assert torch.equal(m.generate_ids(**case, max_new_tokens=9), ref)
    assert m.last_decode_mode.startswith("eager: not on a CUDA device")
    m.cuda_graphs = False
    m.prefill_chunk = 5  # chunked prefill inside generate
    assert torch.equal(m.generate_ids(**case, max_new_tokens=9), ref)


def test_sampling_seeded_repeatable(dense_untied):
    m = ours(dense_untied)
    case, _ = batch_case(4)
    kw = dict(max_new_tokens=8, do_sample=True, temperature=1.3, top_p=0.95)
    a = m.generate_ids(**case, **kw, seed=11)
    assert torch.equal(a, m.generate_ids(**case, **kw, seed=11))
    assert not torch.equal(a, m.generate_ids(**case, **kw, seed=12))
    m.decode_block = 3  # the draws do not depend on when the host reads the tokens
    assert torch.equal(a, m.generate_ids(**case, **kw, seed=11))
    greedy = m.generate_ids(**case, max_new_tokens=8)
    assert torch.equal(m.generate_ids(**case, max_new_tokens=8, do_sample=True, top_k=1, seed=5), greedy)


def test_exponential_race_draws_from_the_filtered_softmax():
    """argmax(p / Exp(1)) is a draw from p: frequencies over many draws match p within 4 standard errors."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0, 1.5]])
    n = 40_000
    g = torch.Generator().manual_seed(0)
    for temp, k, p in ((1.0, 0, 1.0), (0.7, 4, 1.0), (1.5, 0, 0.8)):
        probs = filter_logits(logits, temperature=temp, top_k=k, top_p=p).softmax(-1)[0]
        toks = select_tokens(logits.expand(n, -1), do_sample=True, temperature=temp, top_k=k, top_p=p, generator=g)
        freq = torch.bincount(toks, minlength=6).double() / n
        se = (probs.double() * (1 - probs.double()) / n).sqrt()
        assert bool(((freq - probs.double()).abs() <= 4 * se + 1e-12).all()), (freq, probs)
        assert bool((freq[probs == 0] == 0).all())  # filtered tokens are never drawn


def test_stop_update_on_device_logic():
    eos, pad = torch.tensor([7, 9, -1, -1]), torch.tensor(0)
    done = torch.tensor([False, False, True, False])
    out = stop_update(torch.tensor([7, 3, 9, 9]), done, eos, pad)
    assert out.tolist() == [7, 3, 0, 9] and done.tolist() == [True, False, True, True]
    out = stop_update(torch.tensor([5, 5, 5, 5]), done, eos, pad)  # finished rows stay finished and emit pad
    assert out.tolist() == [0, 5, 0, 0] and done.tolist() == [True, False, True, True]
    assert [batch_bucket(b) for b in (1, 2, 3, 5, 8, 9, 33)] == [1, 2, 4, 8, 8, 16, 64]
    assert [capacity_bucket(t) for t in (1, 256, 257)] == [256, 256, 512]


def test_session_stops_on_host_from_blocks(dense_untied):
    """DecodeSession.tokens ends at the step where the last real row emitted eos, whatever the block size; idle
    bucket rows never hold the loop open."""
    m = ours(dense_untied)
    lm = m.lm
    sess = DecodeSession(lm, 2, 16, Sampling(), graphs=True)
    assert sess.mode.startswith("eager")
    V = lm.cfg.vocab_size
    for block in (1, 2, 5):
        sess.reset()
        logits = torch.zeros(2, V)
        logits[0, 4] = 1.0  # the real row's first token is 4 = eos: the loop stops after one step
        sess.begin(logits, 1, eos_ids=[4], pad_id=0)
        out = list(sess.tokens(6, 1, eos_ids=[4], block=block))
        assert [t.tolist() for t in out] == [[4]]


def test_capture_blockers_name_host_reading_references(dense_untied):
    """The decode step is captured only when none of its host-reading ops runs on its reference."""
    import types

    import reference

    m = ours(dense_untied)
    assert m.lm.capture_blockers() == ["qk_norm_rope", "decode_attention", "causal_conv1d", "fused_gated_delta_rule"]
    ops = m.lm.ops
    try:
        m.lm.ops = types.SimpleNamespace(**{n: getattr(reference, n) for n in dir(reference) if not n.startswith("_")})
        m.lm.ops.decode_attention = lambda *a, **k: None  # stands in for a kernel
        assert "decode_attention" not in m.lm.capture_blockers()
        # a prefill never calls decode attention: an fp32 model, whose decode attention is on the reference,
        # still captures its prefills
        m.lm.ops = ops
        assert m.lm.capture_blockers(prefill=True) == ["qk_norm_rope", "causal_conv1d", "fused_gated_delta_rule"]
    finally:
        m.lm.ops = ops


def test_part_gemms_equal_one_gemm(dense_untied, monkeypatch):
    """language.PART_GEMM_ROWS: a fused projection as one GEMM per contiguous part (row slices of the fused
    weight) gives the logits of one GEMM and copied parts."""
    import model.language as L

    m = ours(dense_untied)
    case, _ = batch_case()
    want = m.logits(**case)
    calls = []
    monkeypatch.setattr(L, "PART_GEMM_ROWS", 1)
    real = L.LanguageModel._part_gemms
    monkeypatch.setattr(L.LanguageModel, "_part_gemms", lambda self, *a: calls.append(1) or real(self, *a))
    got = m.logits(**case)
    assert calls and rel(got, want) < REL


def test_decode_gemm_timing_picks_the_faster(monkeypatch):
    """model.language._fastest_skinny keeps the faster of the skinny variants and cuBLAS (timer stubbed: no GPU);
    a bug in it must raise, not silently fall back to cuBLAS."""
    import model.language as ML

    times = {"theirs": 2.0, 1: 3.0, 2: 1.0}
    monkeypatch.setattr(ML.torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(ML, "_graph_ms", lambda fn, weights, pre: fn(weights[0]))
    wt = torch.zeros(4, 4)
    pick = ML._fastest_skinny(lambda kw, w: times[kw["ksplit"]], lambda w: times["theirs"], wt,
                              [{"ksplit": 1}, {"ksplit": 2}], lambda: None)
    assert pick == {"ksplit": 2}
    times[2] = 5.0
    assert ML._fastest_skinny(lambda kw, w: times[kw["ksplit"]], lambda w: times["theirs"], wt,
                              [{"ksplit": 1}, {"ksplit": 2}], lambda: None) is False
