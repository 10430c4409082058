"""Every bad CLI / API input is one line saying what is wrong and how to fix it, exit code 2, found before any
weight is read (the loader is replaced by one that fails the test); `load`'s defaults; `--help` shows every
default; a single path where a list of images is expected; progress bars on stderr, off with --quiet."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import model as M
import model.model as MM
from model.__main__ import build_parser, main
from model.tiny import ensure_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "model" / "assets" / "sample.png"
CPU_ONLY = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ensure_tiny_checkpoint(tmp_path_factory.mktemp("errors-cache"))


@pytest.fixture
def no_weights(monkeypatch):
    """Reading a weight fails the test: every check must come first."""
    def refuse(*a, **k):
        raise AssertionError("weights were read before the bad input was reported")
    monkeypatch.setattr(MM, "load_weights", refuse)


def one_line_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:  # argparse errors exit; our own checks return 2
        raise SystemExit(main(argv))
    assert e.value.code == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), (argv, err)
    return err.strip()


def test_bad_cli_inputs_one_line_exit_2_before_weights(tiny, tmp_path, capsys, monkeypatch, no_weights):
    monkeypatch.setenv("QWEN35_KERNELS_CACHE", str(tiny.parent))
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    no_cfg = tmp_path / "no_cfg"
    no_cfg.mkdir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["describe", "--device", "mps"], "'mps' is not supported: this model runs on 'cpu' or 'cuda'"),
        (["describe", "--device", "nonsense"], "not a torch device"),
        (["describe", "--dtype", "float64"], "invalid choice: 'float64'"),
        (["describe", "--backend", "triton"], "invalid choice: 'triton'"),
        (["describe", "--max-new-tokens", "x"], "invalid int value"),
        (["describe", "--max-new-tokens", "0"], "at least 1"),
        (["describe", "--fps", "0"], "--fps must be positive"),
        (["describe", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        ([], "the following arguments are required"),
        (["describe", "--image", str(tmp_path)], "it is a directory, not an image file"),
        (["describe", "--image", str(tmp_path / "missing.png")], "no such file"),
        (["describe", "--image", str(not_image)], "not a readable image"),
        (["describe", "--video", str(tmp_path / "none")], "does not exist"),
        (["describe", "--video", str(no_cfg)], "has no image files"),
        (["describe", "--model", str(tmp_path / "nope")], "does not exist"),
        (["describe", "--model", str(a_file)], "is a file: pass the checkpoint's directory"),
        (["describe", "--model", str(no_cfg)], "no config.json"),
        (["describe", "--cache-dir", str(a_file / "sub")], "is not writable"),
        (["describe", "--language-model-only", "--image", str(SAMPLE)], "loads no vision encoder"),
    ]
    if CPU_ONLY:
        cases += [(["describe", "--backend", "kernels"], "--backend kernels runs on a CUDA GPU and this machine "
                   "has none: use --backend reference"),
                  (["describe", "--device", "cuda"], "no CUDA GPU is available")]
    else:
        cases += [(["describe", "--backend", "kernels", "--device", "cpu"], "use backend='reference' on the CPU")]
    for argv, message in cases:
        err = one_line_error(argv, capsys)
        assert message in err, (argv, err)


def test_bad_load_arguments_before_weights(tiny, no_weights):
    cases = [(dict(device="mps"), "not supported"), (dict(device="tpu:0"), "not a torch device"),
             (dict(dtype="float64"), "dtype must be one of"), (dict(dtype=torch.int8), "dtype must be one of"),
             (dict(backend="nope"), "backend must be one of")]
    cases += [(dict(backend="kernels"), "backend='kernels' runs on a CUDA device")] if CPU_ONLY else []
    for kw, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            M.load(tiny, **kw)
        assert "\n" not in str(e.value), kw


def test_load_default_dtype_is_float32_on_cpu(tiny):
    m = M.load(tiny)  # the checkpoint stores bf16
    assert m.dtype == torch.float32 and m.config.dtype == "bfloat16"
    assert M.load(tiny, dtype="bfloat16").dtype == torch.bfloat16


def test_help_shows_every_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["describe"]
    text = " ".join(sub.format_help().split())
    for action in sub._actions:
        if action.dest != "help":
            assert action.help and "default" in action.help, action.dest
    assert "(default: reference)" in text and "(default: 128)" in text


def test_single_image_path_where_a_list_is_expected(tiny):
    m = M.load(tiny)
    a = m.generate("Describe.", images=str(SAMPLE), max_new_tokens=2)
    b = m.generate("Describe.", images=[str(SAMPLE)], max_new_tokens=2)
    assert a == b
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    assert m.generate(msgs, images=SAMPLE, max_new_tokens=2) == b


def test_progress_bars_on_stderr(tiny, capsys, monkeypatch):
    import model.progress as P

    monkeypatch.setattr(P, "DELAY", 0.0)  # show at once (normally after a second of work)
    m = M.load(tiny)
    m.prefill_chunk = 64  # a long prompt: several chunks
    m.progress = True
    m.generate("Describe.", images=[str(SAMPLE)], max_new_tokens=1)
    err = capsys.readouterr().err
    assert "vision" in err and "prefill" in err, err
    for quiet in (False, None):  # off, and the default when stderr is not a terminal (as under pytest)
        m.progress = quiet
        m.generate("Describe.", images=[str(SAMPLE)], max_new_tokens=1)
        assert capsys.readouterr().err == ""


def test_cli_quiet_turns_progress_off(tiny, capsys, monkeypatch):
    seen = {}
    real = M.load

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)
    monkeypatch.setattr(M, "load", spy)
    monkeypatch.setenv("QWEN35_KERNELS_CACHE", str(tiny.parent))
    assert main(["describe", "--max-new-tokens", "1", "--quiet", "--device", "cpu"]) == 0
    assert seen["progress"] is False
    assert main(["describe", "--max-new-tokens", "1", "--device", "cpu"]) == 0
    assert seen["progress"] is None  # bars only on a terminal
    capsys.readouterr()
