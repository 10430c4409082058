"""Command line: describe images (or a video) with a Qwen3.5 checkpoint.

    python -m model describe [--model DIR] [--image PATH ...] [--video FILE_OR_DIR] [--fps F] [--prompt TEXT]
                             [--max-new-tokens N] [--device cpu|cuda] [--dtype D] [--backend reference|kernels]
                             [--language-model-only] [--tensor-parallel N] [--cache-dir DIR] [--quiet]

Without --model it uses a tiny random-weight checkpoint (written once to the cache), so the pipeline runs
anywhere but the text is gibberish. Without --image (and --video) it describes a shipped sample picture.
The answer streams to stdout; notes, progress bars and timings go to stderr. Bad input: one line on stderr,
exit code 2, found before any weight is loaded wherever it can be.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

SAMPLE_IMAGE = Path(__file__).parent / "assets" / "sample.png"
EXIT_USAGE = 2
DTYPES = ("float32", "bfloat16", "float16")
BACKENDS = ("reference", "kernels")


class CliError(Exception):
    """A problem with the user's input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong, where to look), exit code 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m model", description="Qwen3.5 VLM on the reference ops / kernels")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    d = sub.add_parser("describe", help="describe images or a video",
                       description="Describe images or a video; the answer streams to stdout.")
    d.add_argument("--model", metavar="DIR", help="HF Qwen3.5 checkpoint directory (default: a tiny checkpoint "
                   "with random weights, kept in --cache-dir; its text is gibberish)")
    d.add_argument("--image", metavar="PATH", nargs="+", action="extend", default=[],
                   help=f"image file(s) (default: {SAMPLE_IMAGE.name}, the shipped sample, when no --video or "
                   "--language-model-only is given)")
    d.add_argument("--video", metavar="FILE_OR_DIR", help="a video file (.mp4, .mkv, ...; needs PyAV: pip "
                   "install av), sampled at --fps, or a directory of frame images, sorted by name "
                   "(default: none)")
    d.add_argument("--fps", type=float, default=2.0, help="for a video file: frames per second to sample, as HF's "
                   "Qwen3-VL video processor does (4 to 768 frames); for a frame directory: the rate its frames "
                   "were sampled at (default: %(default)s)")
    d.add_argument("--prompt", default=None, help="question (default: 'Describe this image.', 'Describe this "
                   "video.' for a video, 'Hello!' with --language-model-only)")
    d.add_argument("--max-new-tokens", type=int, default=128, metavar="N",
                   help="most tokens to generate (default: %(default)s)")
    d.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when a GPU is available, else cpu)")
    d.add_argument("--dtype", default=None, choices=DTYPES,
                   help="compute dtype (default: float32 on CPU, the checkpoint's dtype on GPU)")
    d.add_argument("--backend", default="reference", choices=BACKENDS,
                   help="reference: the PyTorch reference ops (any device); kernels: the GPU kernels (CUDA only) "
                   "(default: %(default)s)")
    d.add_argument("--language-model-only", action="store_true",
                   help="load only the language model (the vision weights are not read): text prompts only "
                   "(default: off)")
    d.add_argument("--tensor-parallel", type=int, default=None, metavar="N",
                   help="share the model over N processes (tensor / expert parallel): launch with "
                   "`torchrun --nproc-per-node N -m model describe --tensor-parallel N ...` (default: one process)")
    d.add_argument("--cache-dir", default=None, metavar="DIR", help="where the tiny checkpoint is kept "
                   "(default: $QWEN35_KERNELS_CACHE, else ~/.cache/qwen35-kernels)")
    d.add_argument("--quiet", action="store_true", help="no progress bars on stderr (default: bars on a terminal, "
                   "for loading, vision encoding and long prefills)")
    return parser


def describe(args) -> None:
    import torch

    from .model import check_device
    from .processor import list_video_frames, load_image
    from .video import is_video_file, read_video

    # --- everything that can be checked without the weights, first
    if args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not args.fps > 0:
        raise CliError(f"--fps must be positive, got {args.fps}")
    if args.language_model_only and (args.image or args.video):
        raise CliError("--language-model-only loads no vision encoder: drop --image/--video, or drop "
                       "--language-model-only")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.backend == "kernels" and not torch.cuda.is_available():
        raise CliError("--backend kernels runs on a CUDA GPU and this machine has none: use --backend reference")
    try:
        device = check_device(device, args.backend)
    except ValueError as e:
        raise CliError(f"--device {device}: {e}".replace("backend='kernels'", "--backend kernels")) from None
    # bf16 matmuls are slow on CPUs: default to float32 there, the checkpoint's dtype on a GPU.
    dtype_name = args.dtype or ("float32" if device.type == "cpu" else None)
    dtype = getattr(torch, dtype_name) if dtype_name else None

    # Read the inputs first so a bad path fails before the model loads.
    paths = args.image or ([] if args.video or args.language_model_only else [SAMPLE_IMAGE])
    try:
        images = [load_image(p) for p in paths]
        videos = []
        if args.video and is_video_file(args.video) and not Path(args.video).is_dir():
            videos = [read_video(args.video, args.fps)]  # decoded and sampled now: a bad file fails here
        elif args.video:
            videos = [[load_image(f) for f in list_video_frames(args.video)]]
    except ValueError as e:
        raise CliError(str(e)) from None

    if args.model is None:
        from .tiny import default_cache_dir, ensure_tiny_checkpoint

        root = Path(args.cache_dir) if args.cache_dir is not None else default_cache_dir()
        _check_cache_dir(root, "--cache-dir" if args.cache_dir is not None else "the cache directory")
        model_dir = ensure_tiny_checkpoint(root)
        print(f"note: no --model given, using a tiny checkpoint with RANDOM weights ({model_dir}); "
              "its text is gibberish. Pass --model DIR for a real Qwen3.5 checkpoint.", file=sys.stderr)
    else:
        model_dir = Path(args.model)
        if not model_dir.is_dir():
            raise CliError(f"model directory {str(model_dir)!r} does not exist" if not model_dir.exists() else
                           f"--model {str(model_dir)!r} is a file: pass the checkpoint's directory")
        if not (model_dir / "config.json").is_file():
            raise CliError(f"model directory {str(model_dir)!r} has no config.json: not a Hugging Face checkpoint")

    from . import load
    try:
        model = load(model_dir, device=device, dtype=dtype, backend=args.backend,
                     progress=False if args.quiet else None, language_model_only=args.language_model_only,
                     tensor_parallel=args.tensor_parallel)
    except (ValueError, OSError, KeyError) as e:
        raise CliError(f"cannot load the model from {model_dir}: {_one_line(e)}") from None
    if getattr(model, "parallel", None) is not None and model.parallel.rank != 0:  # rank 0 alone writes the answer
        sys.stdout = sys.stderr = open(os.devnull, "w")

    prompt = args.prompt or ("Hello!" if args.language_model_only else
                             "Describe this video." if videos and not images else "Describe this image.")
    content = [{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos]
    messages = [{"role": "user", "content": content + [{"type": "text", "text": prompt}]}]
    try:
        stream = model.generate(messages, images=images or None, videos=videos or None, stream=True,
                                max_new_tokens=args.max_new_tokens, fps=args.fps)
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except ValueError as e:  # e.g. an image too elongated, or too many tokens for the device
        raise CliError(_one_line(e)) from None
    except torch.OutOfMemoryError:
        raise CliError(f"out of memory on {device}: use a smaller image or video, or fewer --max-new-tokens") \
            from None
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(format_timings(getattr(model, "last_timings", None) or {}, getattr(model, "last_decode_mode", "")),
          file=sys.stderr)


def _check_cache_dir(root: Path, what: str) -> None:
    """The tiny checkpoint's directory exists (or can be made) and is writable, unless the checkpoint is there."""
    from .tiny import TINY_NAME, _is_current
    if _is_current(root / TINY_NAME):
        return  # nothing to write
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        raise CliError(f"{what} {str(root)!r} is not writable ({e.strerror or e}): pass a writable --cache-dir "
                       "or set QWEN35_KERNELS_CACHE") from None


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (a loader error may list problems on several)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return "; ".join(lines) if lines else type(e).__name__


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
