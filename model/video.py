"""Video files -> sampled frames, the way HF's Qwen3-VL video processor samples them (PyAV, an optional extra).

`pip install 'qwen35-kernels[video]'` (or `pip install av`) makes video files readable; a directory of frame
images (model.processor.list_video_frames) needs nothing extra.

Sampling follows transformers' `Qwen3VLVideoProcessor.sample_frames` and `read_video_pyav` (5.x):
* the stream's frame count and average rate give the video's fps; num = int(frames / video_fps * fps), clamped
  to [min_frames, max_frames] (4 and 768, the frame budget) and to the frame count;
* indices = linspace(0, frames - 1, num) rounded; the frames at those indices are decoded (RGB);
* a frame's time is index / video_fps (`Qwen3VLProcessor._calculate_timestamps`); the processor pads an odd
  count to an even one with the last frame and stamps each pair of frames with their mean time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
MIN_FRAMES = 4  # Qwen3VLVideoProcessor.min_frames
MAX_FRAMES = 768  # Qwen3VLVideoProcessor.max_frames
DEFAULT_FPS = 2.0  # Qwen3VLVideoProcessor.fps


@dataclass
class SampledVideo:
    """Frames (RGB PIL images) sampled from a video file, their indices in the stream and the stream's fps."""
    frames: list
    indices: list[int]
    video_fps: float
    total_frames: int

    @property
    def times(self) -> list[float]:
        """Seconds of each sampled frame: index / video_fps (as HF stamps them)."""
        return [i / self.video_fps for i in self.indices]


def is_video_file(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in VIDEO_SUFFIXES


def sample_indices(total_frames: int, video_fps: float, fps: float = DEFAULT_FPS, min_frames: int = MIN_FRAMES,
                   max_frames: int = MAX_FRAMES) -> list[int]:
    """Frame indices to keep from a video of `total_frames` frames at `video_fps`, sampling at `fps` (HF's rule)."""
    if total_frames < 1:
        raise ValueError(f"the video has no frames (total_frames={total_frames})")
    if not fps or fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    num = int(total_frames / video_fps * fps)
    num = min(max(num, min_frames), max_frames, total_frames)
    return np.linspace(0, total_frames - 1, num).round().astype(int).tolist()


def read_video(path, fps: float = DEFAULT_FPS, *, min_frames: int = MIN_FRAMES,
               max_frames: int = MAX_FRAMES) -> SampledVideo:
    """Decode a video file with PyAV and keep the frames HF's Qwen3-VL video processor would sample at `fps`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot read video {str(path)!r}: " + ("it is a directory; a directory of frames is "
                         "read as frames only where a video directory is expected" if path.is_dir() else
                         "no such file"))
    try:
        import av
    except ImportError:
        raise ValueError(f"cannot read video {str(path)!r}: video files need PyAV "
                         "(pip install 'qwen35-kernels[video]', or pip install av), or pass a directory of "
                         "frame images instead") from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"cannot read video {str(path)!r}: it has no video stream")
            stream = container.streams.video[0]
            total = int(stream.frames)
            rate = float(stream.average_rate) if stream.average_rate else 0.0
            if total <= 0:  # some containers do not store the frame count: count by decoding once
                total = sum(1 for _ in container.decode(video=0))
                container.seek(0)
            if rate <= 0:
                raise ValueError(f"cannot read video {str(path)!r}: the stream has no frame rate")
            indices = sample_indices(total, rate, fps, min_frames, max_frames)
            want, frames = set(indices), {}
            for i, frame in enumerate(container.decode(video=0)):
                if i > indices[-1]:
                    break
                if i in want:
                    frames[i] = frame.to_image()  # RGB PIL image
    except (av.FFmpegError, OSError) as e:
        raise ValueError(f"cannot read video {str(path)!r}: not a readable video file ({e})") from None
    missing = [i for i in indices if i not in frames]
    if missing:  # the stream held fewer frames than its header said: keep what decoded (HF does the same)
        indices = [i for i in indices if i in frames]
        if not indices:
            raise ValueError(f"cannot read video {str(path)!r}: no frame could be decoded")
    return SampledVideo(frames=[frames[i] for i in indices], indices=indices, video_fps=rate, total_frames=total)
