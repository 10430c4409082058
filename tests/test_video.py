"""Video files (model.video, PyAV): frame sampling as HF's Qwen3-VL video processor does it, the processor's
grids and timestamps for a clip the test writes, the CLI's --video clip.mp4, and the errors.

The sampling rule and timestamps are compared with transformers' own code (`Qwen3VLVideoProcessor.sample_frames`,
`Qwen3VLProcessor._calculate_timestamps`); the pixels of a decoded file are compared with the same frames given
as a list (the frame-list path is checked against HF's math in test_processor.py). HF's video processor itself
needs torchvision, which the CPU-only CI environment cannot use (PyPI's torchvision 0.28 wheel on torch's CPU wheel:
"operator torchvision::nms does not exist"), so the pixel comparison with it is skipped there.
The tests that decode a file are skipped only when PyAV (the `video` extra, also in `test`) is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.processor import Processor
from model.video import read_video, sample_indices

REPO = Path(__file__).resolve().parents[1]
FRAMES, RATE, W, H = 25, 10, 96, 64  # a 2.5 s clip at 10 fps


def write_clip(path: Path, n: int = FRAMES, rate: int = RATE) -> Path:
    """An mp4 (mpeg4) whose frame i has red level 10 * i, so a decoded frame tells its index."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=rate)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(n):
            a = np.zeros((H, W, 3), np.uint8)
            a[..., 0], a[..., 1] = 10 * i, 128
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("video") / "clip.mp4")


def test_sampling_matches_hf():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    hf = Qwen3VLVideoProcessor()
    for total, vfps, fps in [(25, 10, 2.0), (300, 30, 2.0), (7, 24, 2.0), (3, 24, 2.0), (100000, 30, 2.0),
                             (241, 29.97, 1.0), (50, 25, 0.5), (90, 30, 4.0)]:
        want = hf.sample_frames(VideoMetadata(total_num_frames=total, fps=vfps), fps=fps).tolist()
        assert sample_indices(total, vfps, fps) == want, (total, vfps, fps)
    assert len(sample_indices(100000, 30, 2.0)) == 768  # the frame budget
    with pytest.raises(ValueError, match="fps must be positive"):
        sample_indices(10, 10, 0)


def test_read_video_samples_the_right_frames(clip):
    v = read_video(clip, fps=2.0)
    assert v.total_frames == FRAMES and v.video_fps == RATE
    assert v.indices == sample_indices(FRAMES, RATE, 2.0) == [0, 6, 12, 18, 24]
    assert all(f.size == (W, H) for f in v.frames)
    red = [float(np.asarray(f)[..., 0].mean()) for f in v.frames]
    assert all(abs(r - 10 * i) < 12 for r, i in zip(red, v.indices)), red  # lossy codec: within a level
    assert v.times == [i / RATE for i in v.indices]


def test_processor_takes_a_video_file(clip):
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    proc = Processor()
    pv, grid, stamps = proc.preprocess_videos([clip], fps=2.0)
    v = read_video(clip, fps=2.0)
    # 5 sampled frames: padded to an even count (6) with the last, 3 temporal patches
    assert grid.tolist()[0][0] == 3
    assert stamps[0] == Qwen3VLProcessor._calculate_timestamps(None, v.indices, RATE, 2)
    # the same pixels as the decoded frames given as a list (that path matches HF's math: test_processor.py)
    pv_list, grid_list, _ = proc.preprocess_videos([v.frames], fps=2.0)
    assert torch.equal(pv, pv_list) and torch.equal(grid, grid_list)
    # the whole call: a single path where a list is expected, the prompt's timestamps from the file
    text = "<|vision_start|><|video_pad|><|vision_end|>hi"
    out = proc(text, videos=str(clip), fps=2.0)
    assert torch.equal(out["video_grid_thw"], grid)
    assert "<0.3 seconds>" in proc.decode(out["input_ids"][0].tolist(), skip_special_tokens=False)  # (0+0.6)/2


def test_video_pixels_match_hf_video_processor(clip):
    """Where torchvision is installed: our pixels against HF's own video processor on the same decoded frames.
    HF resizes with torchvision's tensor bicubic, we with PIL's (as for images), so the bound is a resize one."""
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # PyPI's torchvision wheel on torch's CPU wheel fails to register its ops
        pytest.skip(f"torchvision is not usable here: {type(e).__name__}: {str(e)[:80]}")
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    v = read_video(clip, fps=2.0)
    frames = np.stack([np.asarray(f) for f in v.frames])  # [F, H, W, 3]
    hf = Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 25165824})(
        videos=[frames], do_sample_frames=False, return_tensors="pt")
    pv, grid, _ = Processor().preprocess_videos([v.frames], fps=2.0)
    assert torch.equal(grid, hf["video_grid_thw"])
    err = (pv - hf["pixel_values_videos"]).abs()
    assert float(err.mean()) < 0.02 and float(err.max()) < 0.5, (float(err.mean()), float(err.max()))


def test_video_errors(tmp_path, monkeypatch):
    import sys

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    if "av" in sys.modules or _has_av():
        with pytest.raises(ValueError, match="not a readable video file"):
            read_video(bad)
    with pytest.raises(ValueError, match="no such file"):
        read_video(tmp_path / "missing.mp4")
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    with pytest.raises(ValueError, match=r"need PyAV \(pip install 'qwen35-kernels\[video\]'"):
        read_video(bad)


def _has_av() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def test_cli_video_file(clip, tmp_path, capsys, monkeypatch):
    from model.__main__ import main
    from model.tiny import ensure_tiny_checkpoint

    cache = tmp_path / "cache"
    ensure_tiny_checkpoint(cache)
    monkeypatch.setenv("QWEN35_KERNELS_CACHE", str(cache))
    assert main(["describe", "--video", str(clip), "--max-new-tokens", "2", "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "prefill:" in err and "error" not in err
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert main(["describe", "--video", str(notes)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "neither a directory of frames nor a video file" in err and "\n" not in err
