"""Command line: describe images (or a video) with a Qwen3.5 checkpoint.

    python -m model describe [--model DIR] [--image PATH ...] [--video FRAMES_DIR] [--prompt TEXT]
                             [--max-new-tokens N] [--device cpu|cuda] [--dtype D] [--backend reference|kernels]

Without --model it uses a tiny random-weight checkpoint (written once to the cache), so the pipeline runs
anywhere but the text is gibberish. Without --image (and --video) it describes a shipped sample picture.
The answer streams to stdout; notes and timings go to stderr. Bad input: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SAMPLE_IMAGE = Path(__file__).parent / "assets" / "sample.png"
EXIT_USAGE = 2


class CliError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model", description="Qwen3.5 VLM on the reference ops / kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("describe", help="describe images or a video")
    d.add_argument("--model", metavar="DIR", help="HF Qwen3.5 checkpoint directory (default: tiny random weights)")
    d.add_argument("--image", metavar="PATH", nargs="+", action="extend", default=[],
                   help="image file(s); default: the shipped sample image when no --video is given")
    d.add_argument("--video", metavar="DIR", help="directory of video frames (sorted by name)")
    d.add_argument("--fps", type=float, default=2.0, help="frame rate the --video frames were sampled at (2)")
    d.add_argument("--prompt", default=None, help="question (default: 'Describe this image.' / '... video.')")
    d.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    d.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    d.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="compute dtype (default: float32 on CPU, the checkpoint's dtype on GPU)")
    d.add_argument("--backend", default="reference", choices=["reference", "kernels"])
    d.add_argument("--cache-dir", default=None, help="where the tiny checkpoint is kept "
                   "(default: $QWEN35_KERNELS_CACHE or ~/.cache/qwen35-kernels)")
    return parser


def describe(args) -> None:
    import torch

    from .processor import list_video_frames, load_image

    if args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.fps <= 0:
        raise CliError(f"--fps must be positive, got {args.fps}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device_type = torch.device(device).type
    except RuntimeError:
        raise CliError(f"--device {device!r} is not a torch device (use cpu or cuda)") from None
    if device_type == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA GPU is available")
    # bf16 matmuls are slow on CPUs: default to float32 there, the checkpoint's dtype on a GPU.
    dtype_name = args.dtype or ("float32" if device_type == "cpu" else None)
    dtype = getattr(torch, dtype_name) if dtype_name else None

    # Read the inputs first so a bad path fails before the model loads.
    paths = args.image or ([] if args.video else [SAMPLE_IMAGE])
    try:
        images = [load_image(p) for p in paths]
        videos = [[load_image(f) for f in list_video_frames(args.video)]] if args.video else []
    except ValueError as e:
        raise CliError(str(e)) from None

    if args.model is None:
        from .tiny import ensure_tiny_checkpoint

        model_dir = ensure_tiny_checkpoint(args.cache_dir)
        print(f"note: no --model given, using a tiny checkpoint with RANDOM weights ({model_dir}); "
              "its text is gibberish. Pass --model DIR for a real Qwen3.5 checkpoint.", file=sys.stderr)
    else:
        model_dir = Path(args.model)
        if not model_dir.is_dir():
            raise CliError(f"model directory {str(model_dir)!r} does not exist")
        if not (model_dir / "config.json").is_file():
            raise CliError(f"model directory {str(model_dir)!r} has no config.json: not a Hugging Face checkpoint")

    try:
        from . import load
    except ImportError:
        raise CliError("model.load is not available in this install") from None
    try:
        model = load(model_dir, device=device, dtype=dtype, backend=args.backend)
    except (ValueError, OSError, KeyError) as e:
        raise CliError(f"cannot load the model from {model_dir}: {e}") from None

    prompt = args.prompt or ("Describe this video." if videos and not images else "Describe this image.")
    content = [{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos]
    messages = [{"role": "user", "content": content + [{"type": "text", "text": prompt}]}]
    try:
        stream = model.generate(messages, images=images or None, videos=videos or None, stream=True,
                                max_new_tokens=args.max_new_tokens, fps=args.fps)
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except ValueError as e:  # e.g. an image too elongated, or too many tokens for the device
        raise CliError(str(e)) from None
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(format_timings(getattr(model, "last_timings", None) or {}, getattr(model, "last_decode_mode", "")),
          file=sys.stderr)


def format_timings(t: dict, mode: str = "") -> str:
    """Timing lines from Model.last_timings (vision_ms, prefill_ms, ttft_ms, decode_tokens, decode_s) and
    Model.last_decode_mode ("graph" or "eager: why")."""
    lines = []
    if t.get("vision_ms") is not None:
        lines.append(f"vision:  {t['vision_ms']:.1f} ms")
    if t.get("prefill_ms") is not None:
        ttft = f" (time to first token {t['ttft_ms']:.1f} ms)" if t.get("ttft_ms") is not None else ""
        lines.append(f"prefill: {t['prefill_ms']:.1f} ms{ttft}")
    n, s = t.get("decode_tokens"), t.get("decode_s")
    if n is not None and s is not None:
        rate = f"{n / s:.1f} tokens/s" if s > 0 else "n/a tokens/s"
        lines.append(f"decode:  {n} tokens in {s:.3f} s ({rate}{', ' + mode if mode else ''})")
    return "\n".join(lines) if lines else "timings: not reported by the model"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "describe":
            describe(args)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
