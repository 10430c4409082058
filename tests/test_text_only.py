"""Text-only mode: load(..., language_model_only=True) / --language-model-only reads and allocates no vision
tensor, gives the full model's logits on text, and refuses an image or video with one clear error."""

from __future__ import annotations

import pytest
import torch

import model as M
from model.loader import VISUAL
from model.tiny import ensure_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ensure_tiny_checkpoint(tmp_path_factory.mktemp("text-only-cache"))


@pytest.fixture(scope="module")
def text_model(tiny):
    return M.load(tiny, language_model_only=True)


def test_no_vision_tensor_is_read_or_allocated(tiny, tmp_path, monkeypatch):
    """The loader never asks the file for a vision tensor, and a checkpoint without them loads text-only."""
    import shutil

    import safetensors
    from safetensors.torch import load_file, save_file

    asked = []
    real_open = safetensors.safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.h = real_open(*a, **k)

        def __enter__(self):
            self.h.__enter__()
            return self

        def __exit__(self, *a):
            return self.h.__exit__(*a)

        def keys(self):
            return self.h.keys()

        def get_slice(self, k):
            return self.h.get_slice(k)

        def get_tensor(self, k):
            asked.append(k)
            return self.h.get_tensor(k)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    m = M.load(tiny, language_model_only=True)
    assert asked and not [k for k in asked if k.startswith(VISUAL)]
    assert m.vision is None and m.language_model_only
    monkeypatch.undo()

    # the same checkpoint with its vision tensors deleted: text-only loads, the full model names what is missing
    d = tmp_path / "no_vision"
    shutil.copytree(tiny, d)
    sd = {k: t for k, t in load_file(d / "model.safetensors").items() if not k.startswith(VISUAL)}
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    assert M.load(d, language_model_only=True).vision is None
    with pytest.raises(ValueError, match="missing: model.visual."):
        M.load(d)


def test_text_logits_equal_the_full_model(tiny, text_model):
    full = M.load(tiny)
    ids = torch.tensor([[248045, 872, 198, 9707, 0, 11, 1917, 13]])
    torch.testing.assert_close(text_model.logits(ids), full.logits(ids), rtol=0, atol=0)
    assert text_model.generate("Hello", max_new_tokens=3) == full.generate("Hello", max_new_tokens=3)


def test_an_image_is_refused_with_one_line(text_model, monkeypatch):
    import model.processor as P

    def no_pixels(*a, **k):
        raise AssertionError("the image was processed before the refusal")
    monkeypatch.setattr(P.Processor, "preprocess_images", no_pixels)
    for call in (lambda: text_model.generate("What is it?", images=["photo.jpg"]),
                 lambda: text_model.encode_images(torch.zeros(4, 1536), torch.tensor([[1, 2, 2]]))):
        with pytest.raises(ValueError, match="language_model_only=True and has no vision encoder") as e:
            call()
        assert "\n" not in str(e.value)


def test_cli_language_model_only(tiny, capsys, monkeypatch):
    from model.__main__ import main

    monkeypatch.setenv("QWEN35_KERNELS_CACHE", str(tiny.parent))
    assert main(["describe", "--language-model-only", "--max-new-tokens", "2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "prefill:" in err and "error" not in err
