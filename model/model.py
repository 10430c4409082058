"""`Model`: the Qwen3.5 VLM (vision tower + hybrid LM) on an op backend, with prefill logits and generation."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelConfig
from .generate import DEFAULT_BLOCK, DecodeSession, Sampling, batch_bucket, capacity_bucket, check_sampling, timed
from .language import DEFAULT_CHUNK, LanguageModel, _call
from .loader import LM, LM_HEAD, VISUAL, load_weights
from .ops import ops_for, placement, uncovered
from .vision import VisionTower


@dataclass
class _Batch:
    """A left-padded batch, packed: the real tokens of every row back to back."""
    input_ids: torch.Tensor  # [B, S] as given
    mask: torch.Tensor  # bool [B, S]
    lengths: list[int]  # real tokens per row
    cu_seqlens: torch.Tensor  # int32 [B+1]
    embeds: torch.Tensor  # [T, H] packed input embeddings (vision rows scattered in)
    positions: torch.Tensor  # int64 [3, T] mRoPE ids
    rope_delta: torch.Tensor  # int64 [B]
    vision: "_Stopwatch"  # the vision tower and the scatter of its rows (not started: no media)

    @property
    def vision_ms(self) -> float:
        return self.vision.ms


def load(path, *, device="cpu", dtype=None, backend: str = "reference", progress: bool | None = None,
         cuda_graphs: bool | None = None, strict: bool = False, language_model_only: bool = False,
         tensor_parallel: int | None = None) -> "Model":
    """Load a Qwen3.5 / Qwen3.5-MoE checkpoint directory (HF layout) onto `device` for `backend`.

    On backend="kernels" an op whose kernel does not cover the checkpoint's shapes (e.g. a head dim no kernel is
    built for) runs on its reference, and `Model.placement(why=True)` says why; strict=True refuses such a
    checkpoint instead (ValueError naming the ops), before any weight is read.

    device: "cpu" or "cuda[:n]"; backend="kernels" needs a CUDA device. dtype: a torch dtype or its name;
    None = float32 on the CPU (bf16 matmuls are slow there), the checkpoint's (config.json "dtype") on a GPU.
    cuda_graphs: replay the vision tower (model.vision_graph) and the decode step (model.generate.DecodeSession)
    from CUDA graphs; None = on for the kernels backend on a CUDA device. progress: a tqdm bar while loading
    (None: for big checkpoints, on a terminal). language_model_only: the vision tower's weights are neither read
    nor allocated (text prompts only; an image or video then raises ValueError).
    Bad arguments raise one-line ValueErrors before any weight is read (a missing directory: FileNotFoundError).
    tensor_parallel: N ranks share the model (tensor / expert parallel, model.parallel): run under
    `torchrun --nproc-per-node N`, every rank making the same calls; device "cuda" = this rank's GPU.
    """
    dtype = check_dtype(dtype)
    cfg = ModelConfig.from_pretrained(path)  # checks the directory and config.json before any weight
    if strict:
        _refuse_uncovered(backend, cfg, dtype or (getattr(torch, cfg.dtype, None) if cfg.dtype else None))
    device = check_device(device, backend)
    if dtype is None and device.type == "cpu":
        dtype = torch.float32
    if tensor_parallel is not None and tensor_parallel != 1 or isinstance(tensor_parallel, bool):
        from .parallel import load_parallel
        return load_parallel(path, tensor_parallel, device=device, dtype=dtype, backend=backend, progress=progress,
                             cuda_graphs=cuda_graphs, strict=strict, vision=not language_model_only)
    cfg, weights = load_weights(path, cfg, device=device, dtype=dtype, progress=progress,
                                vision=not language_model_only)
    return Model(cfg, weights, backend=backend, path=path, cuda_graphs=cuda_graphs, strict=strict,
                 progress=progress)


def check_dtype(dtype):
    """None, a floating torch dtype the model runs in, or its name -> torch dtype (or None); else ValueError."""
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype is None or dtype in names.values():
        return dtype
    name = str(dtype).removeprefix("torch.")
    if isinstance(dtype, (str, torch.dtype)) and name in names:
        return names[name]
    raise ValueError(f"dtype must be one of {list(names)} (or None for the default), got {dtype!r}")


def check_device(device, backend: str = "reference") -> torch.device:
    """A usable torch.device for `backend`, or a one-line ValueError saying what to pass instead."""
    from .ops import BACKENDS
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device: use 'cpu' or 'cuda'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is not supported: this model runs on 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: no CUDA GPU is available (use device='cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if backend == "kernels" and dev.type != "cuda":
        raise ValueError(f"backend='kernels' runs on a CUDA device, got device {str(device)!r}: "
                         "use backend='reference' on the CPU")
    return dev


def _refuse_uncovered(backend: str, config: ModelConfig, dtype) -> None:
    """strict=True: a ValueError naming every op whose kernel does not cover this checkpoint."""
    gaps = uncovered(backend, config, dtype)
    if gaps:
        raise ValueError(f"backend={backend!r} with strict=True: the kernels do not cover this checkpoint: "
                         + "; ".join(f"{op}: {why}" for op, why in gaps.items())
                         + " (strict=False runs these ops on the reference)")


class Model:
    """The Qwen3.5 VLM on one op backend ("reference" or "kernels", see model.ops).

    encode_images(pixel_values, grid_thw)        vision tower + merger -> [N/4, H]
    logits(input_ids, attention_mask=..., ...)   full prefill, no cache -> [B, S, V]
    generate_ids(input_ids, ..., max_new_tokens) HF `generate` semantics on token ids (greedy by default)
    generate(prompt or messages, images=...)     chat text in, text (or streamed pieces) out; `last_timings`
    Batches are left padded; inside, the real tokens of all rows are packed back to back (varlen ops), so
    padding never enters attention, the conv or the delta rule (equivalent to HF's masking).
    """

    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], *, backend: str = "reference",
                 path=None, cuda_graphs: bool | None = None, strict: bool = False, parallel=None,
                 progress: bool | None = None):
        self.config, self.backend = config, backend
        # parallel: this rank's model.parallel.Shard (None: one process); the ops are chosen for its local shapes
        self.parallel = parallel
        ops_config = config if parallel is None else parallel.local_config
        self.path = None if path is None else Path(path)
        dtype = weights[LM_HEAD].dtype  # the model's dtype: which ops the kernels cover is decided here, once
        if strict:
            _refuse_uncovered(backend, ops_config, dtype)
        self._placement = placement(backend, ops_config, dtype, why=True)
        self.ops = ops_for(backend, ops_config, dtype)
        vis = {k[len(VISUAL):]: t for k, t in weights.items() if k.startswith(VISUAL)}
        lm = {k[len(LM):]: t for k, t in weights.items() if k.startswith(LM)}
        lm["lm_head.weight"] = weights[LM_HEAD]
        # no vision weights (load(..., language_model_only=True)): a text-only model
        self.vision = VisionTower(config.vision, vis, self.ops) if vis else None
        if parallel is None:
            self.lm = LanguageModel(config.text, lm, self.ops)
        else:
            self.lm = parallel.language_model(ops_config.text, lm, self.ops)
        if cuda_graphs is None:
            cuda_graphs = backend == "kernels" and self.device.type == "cuda"
        if cuda_graphs and self.vision is not None:
            from .vision_graph import GraphedVisionTower
            self.vision = GraphedVisionTower(self.vision)
        if parallel is not None and self.vision is not None:
            self.vision = parallel.vision(self.vision)  # data-parallel: a share of the images per rank
        self.cuda_graphs = bool(cuda_graphs)
        self.prefill_chunk = DEFAULT_CHUNK  # packed prompt tokens per prefill pass (bounds activation memory)
        # one-chunk prefills up to a model-size dependent length replayed from CUDA graphs of their token bucket
        # (model.prefill_graph), when cuda_graphs; None: eager
        self.prefill_graphs = None
        if (self.cuda_graphs and parallel is None and self.device.type == "cuda"
                and os.environ.get("QWEN35_PREFILL_GRAPHS", "1") != "0"):
            from .prefill_graph import PrefillGraphs, token_limit
            self.prefill_graphs = PrefillGraphs(token_limit(self.lm))
        self.decode_block = DEFAULT_BLOCK  # decode steps between two host reads of the tokens
        self.max_sessions = 2  # decode sessions (static caches + graphs) kept for reuse
        self._sessions: dict = {}
        self._processor = None
        self.last_timings: dict = {}
        self.last_decode_mode = ""  # "graph", or "eager: <why>"
        self.progress = progress  # tqdm bars on stderr for vision and long prefills: True, None (a tty), False


    @property
    def progress(self) -> bool | None:
        return self._progress

    @progress.setter
    def progress(self, show: bool | None) -> None:
        self._progress = show
        self.lm.progress = show
        tower = self.vision
        while hasattr(tower, "tower"):  # GraphedVisionTower (and wrappers) hold the eager tower
            tower = tower.tower
        if tower is not None:
            tower.progress = show

    @property
    def language_model_only(self) -> bool:
        """True when the model has no vision tower (loaded with language_model_only=True)."""
        return self.vision is None

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.dtype

    def placement(self, why: bool = False) -> dict[str, str]:
        """{op: "kernels" or "reference"}: where each op runs; why=True: "reference: <reason>" (no kernel yet, or
        the kernel does not cover this checkpoint's shapes or dtype)."""
        return dict(self._placement) if why else {op: p.split(":")[0] for op, p in self._placement.items()}

    @property
    def processor(self):
        if self._processor is None:
            from .processor import Processor
            self._processor = Processor.from_pretrained(self.path)
        return self._processor

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.config.eos_token_ids

    # ---------------------------------------------------------------------------------------------- vision
    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 1536] of all images (or videos), grid_thw [n, 3] -> merged embeddings [N/4, H]."""
        self._need_vision()
        return self.vision(pixel_values, image_grid_thw)

    def _need_vision(self) -> None:
        if self.vision is None:
            raise ValueError("this model was loaded with language_model_only=True and has no vision encoder: "
                             "load it without language_model_only to pass images or videos")

    # ---------------------------------------------------------------------------------------------- prefill
    @torch.inference_mode()
    def logits(self, input_ids, *, attention_mask=None, pixel_values=None, image_grid_thw=None,
               pixel_values_videos=None, video_grid_thw=None, mm_token_type_ids=None) -> torch.Tensor:
        """Full-sequence logits [B, S, V] in the model dtype; padded positions are 0.

        input_ids [B, S] (or [S]); attention_mask [B, S], 1 = real token, padding on the left. Takes the
        processor's output dict as keywords; mm_token_type_ids is accepted and not needed (the placeholder
        ids say the same).
        """
        batch = self._prepare(input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                              video_grid_thw)
        h = self.lm.forward(batch.embeds, batch.positions, batch.cu_seqlens)
        packed = self.lm.head(h)  # [T, V]
        out = packed.new_zeros(*batch.mask.shape, packed.shape[-1])
        out[batch.mask.to(out.device)] = packed  # row-major order of the mask = packing order
        return out

    def _prepare(self, input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                 video_grid_thw) -> _Batch:
        cfg, ops, dev = self.config, self.ops, self.device
        ids = torch.as_tensor(input_ids)
        if ids.dim() == 1:
            ids = ids[None]
            attention_mask = None if attention_mask is None else torch.as_tensor(attention_mask)[None]
        if ids.dim() != 2 or ids.shape[1] == 0 or ids.is_floating_point():
            raise ValueError(f"input_ids must be an integer tensor [B, S] with S > 0, got {tuple(ids.shape)}")
        ids = ids.to(torch.int64)
        B, S = ids.shape
        if attention_mask is None:
            mask = torch.ones(B, S, dtype=torch.bool)
        else:
            mask = torch.as_tensor(attention_mask).to("cpu").bool()
            if tuple(mask.shape) != (B, S):
                raise ValueError(f"attention_mask must have shape {(B, S)}, got {tuple(mask.shape)}")
        lengths = mask.sum(1).tolist()
        for b, n in enumerate(lengths):  # left padding: zeros, then ones
            if n == 0 or not bool(mask[b, S - n:].all()):
                raise ValueError(f"attention_mask row {b} must be left padding (0s then at least one 1)")
        ids_cpu = ids.cpu()
        # [T] packed real tokens, row by row: each row's last n (left padding; slices, as a boolean index of the
        # mask took ~2 ms at 8192 tokens on an H200 host)
        real = torch.cat([ids_cpu[b, S - n:] for b, n in enumerate(lengths)])
        cu = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(torch.int32)

        embeds = self.lm.embed(_to_device(real, dev))
        # images and videos go through the tower in one call; their rows then replace the placeholders
        media = []
        for grid, pixels, tok, name in ((image_grid_thw, pixel_values, cfg.image_token_id, "image"),
                                        (video_grid_thw, pixel_values_videos, cfg.video_token_id, "video")):
            if pixels is None:
                if bool((real == tok).any()):
                    raise ValueError(f"input_ids hold {name} tokens but no {name} pixel values were given")
                continue
            if grid is None:
                raise ValueError(f"{name} pixel values were given without their grid_thw")
            media.append((torch.as_tensor(pixels).to(dev, self.dtype), torch.as_tensor(grid).cpu(), tok))
        if media:
            self._need_vision()

        # mRoPE ids per row, each row taking its own images / videos (whole grids, in order). Before the tower
        # runs: rope_index reads the device, which would otherwise wait for the tower to finish.
        merge = cfg.vision.spatial_merge_size
        grids = {cfg.image_token_id: _grid_list(image_grid_thw), cfg.video_token_id: _grid_list(video_grid_thw)}
        used = {tok: 0 for tok in grids}
        positions, deltas = [], []
        for b in range(B):
            row = real[int(cu[b]): int(cu[b + 1])]
            row_grids = {}
            for tok, glist in grids.items():
                need, take = int((row == tok).sum()), []
                while need > 0 and used[tok] < len(glist):
                    take.append(glist[used[tok]])
                    need -= take[-1][0] * take[-1][1] * take[-1][2] // merge ** 2
                    used[tok] += 1
                if need != 0:
                    raise ValueError(f"row {b}: the number of tokens with id {tok} does not match the grids given")
                row_grids[tok] = torch.tensor(take, dtype=torch.int64, device=dev) if take else None
            if all(g is None for g in row_grids.values()):
                # a text row: position p on all three axes, delta 0 (what rope_index gives), built on the device
                # without rope_index's host reads
                positions.append(torch.arange(len(row), dtype=torch.int64, device=dev).expand(3, -1))
                deltas.append(0)
                continue
            pos, delta = ops.rope_index(row.to(dev), row_grids[cfg.image_token_id], row_grids[cfg.video_token_id],
                                        cfg.image_token_id, cfg.video_token_id, merge)
            positions.append(pos)
            deltas.append(int(delta))
        for tok, glist in grids.items():
            if used[tok] != len(glist):
                raise ValueError(f"{len(glist) - used[tok]} grid(s) for token id {tok} have no tokens in input_ids")

        vision = _Stopwatch(dev)
        if media:
            vision.start()
            feats = self.vision(torch.cat([m[0] for m in media]), torch.cat([m[1] for m in media]))
            counts = [int(m[1].prod(-1).sum()) // cfg.vision.spatial_merge_size ** 2 for m in media]
            for (_, _, tok), f in zip(media, feats.split(counts)):
                is_tok = real == tok  # on the host: its count equals f's rows (the grids were checked above)
                embeds = _call(ops.scatter_image_embeds, embeds, f.to(embeds.dtype), _to_device(is_tok, dev),
                               validate=False)
            vision.stop()
        return _Batch(input_ids=ids, mask=mask, lengths=lengths, cu_seqlens=_to_device(cu, dev), embeds=embeds,
                      positions=torch.cat(positions, dim=1),
                      rope_delta=_to_device(torch.tensor(deltas, dtype=torch.int64), dev), vision=vision)

    # ---------------------------------------------------------------------------------------------- generation
    def generate_ids(self, input_ids, *, attention_mask=None, pixel_values=None, image_grid_thw=None,
                     pixel_values_videos=None, video_grid_thw=None, max_new_tokens: int = 32,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                     seed=None, eos_token_ids=None, pad_token_id=None, mm_token_type_ids=None) -> torch.Tensor:
        """Prompt ids [B, S] (left padded) -> [B, S + n] with n <= max_new_tokens generated tokens (HF semantics).

        Greedy unless do_sample (temperature, then top_k (0 = off), then top_p; `seed` makes it repeatable).
        Rows stop at the checkpoint's eos ids (or `eos_token_ids`); a stopped row is filled with the pad id
        (`pad_token_id`, else the checkpoint's, else the first eos id, else 0); the loop ends when all stopped.
        """
        ids = torch.as_tensor(input_ids)
        new = list(self.generate_steps(
            ids, attention_mask=attention_mask, pixel_values=pixel_values, image_grid_thw=image_grid_thw,
            pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw, max_new_tokens=max_new_tokens,
            do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
            eos_token_ids=eos_token_ids, pad_token_id=pad_token_id))
        out = (ids[None] if ids.dim() == 1 else ids).to(self.device, torch.int64)
        return torch.cat([out, torch.stack(new, dim=1).to(self.device)], dim=1) if new else out

    @torch.inference_mode()
    def generate_steps(self, input_ids, *, attention_mask=None, pixel_values=None, image_grid_thw=None,
                       pixel_values_videos=None, video_grid_thw=None, max_new_tokens: int = 32,
                       do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                       seed=None, eos_token_ids=None, pad_token_id=None, mm_token_type_ids=None):
        """`generate_ids` one step at a time: yields the new token of every row ([B] int64, on the CPU) per step.

        Prefill runs in chunks of `self.prefill_chunk` packed tokens; decode runs on a `DecodeSession` (static
        cache, on-device sampling and stopping, the step replayed from a CUDA graph when `self.cuda_graphs`),
        whose tokens the host reads every `self.decode_block` steps. `self.last_timings`: vision_ms, prefill_ms
        (prompt preparation + prefill + first token, vision excluded), ttft_ms (vision + prefill), decode_tokens,
        decode_s; `self.last_decode_mode` says whether the step ran from a graph.
        """
        check_sampling(do_sample, temperature, top_k, top_p, max_new_tokens)
        eos = tuple(self.eos_token_ids if eos_token_ids is None else
                    ([eos_token_ids] if isinstance(eos_token_ids, int) else eos_token_ids))
        pad = pad_token_id if pad_token_id is not None else self.config.pad_token_id
        pad = pad if pad is not None else (eos[0] if eos else 0)

        t0 = time.perf_counter()
        batch = self._prepare(input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                              video_grid_thw)
        B = len(batch.lengths)
        sampling = Sampling(bool(do_sample), float(temperature), int(top_k), float(top_p)) if do_sample \
            else Sampling()
        t1 = time.perf_counter()
        session = self._session(batch_bucket(B) if self.cuda_graphs else B,
                                capacity_bucket(max(batch.lengths) + max(max_new_tokens, 1)), sampling, len(eos))
        setup_s = time.perf_counter() - t1  # first use of a bucket: cache allocation and graph capture
        self.last_decode_mode = session.mode
        cache = session.cache
        # lengths and deltas to 0; the conv and recurrent states need no clearing: a prefill's first pass starts
        # from zero states and overwrites every row's (LanguageModel._deltanet)
        cache.lengths.zero_()
        cache.rope_delta.zero_()
        cache.rope_delta[:B].copy_(batch.rope_delta)
        lengths = batch.lengths + [0] * (session.batch - B)
        h = self.lm.prefill(cache, batch.embeds, batch.positions, lengths, chunk_size=self.prefill_chunk,
                            graphs=self.prefill_graphs if self.cuda_graphs else None)
        if self.parallel is not None and do_sample and seed is None:
            seed = self.parallel.common_seed(self.device)  # every rank must draw the same tokens
        session.begin(self.lm.head(h), B, eos, pad, seed)  # lm_head on each row's last token only
        _sync(self.device)
        prefill_ms = (time.perf_counter() - t0 - setup_s) * 1e3 - batch.vision_ms
        timings = dict(vision_ms=batch.vision_ms, prefill_ms=prefill_ms, ttft_ms=batch.vision_ms + prefill_ms,
                       decode_tokens=0, decode_s=0.0)
        self.last_timings = timings
        yield from timed(session.tokens(max_new_tokens, B, eos, self.decode_block), timings)

    def _session(self, batch: int, capacity: int, sampling: Sampling, n_eos: int) -> DecodeSession:
        """A decode session for this bucket, reused if one exists (LRU of `max_sessions`)."""
        key = (batch, capacity, sampling, max(8, n_eos))
        sess = self._sessions.pop(key, None)
        if sess is None:
            while len(self._sessions) >= max(1, self.max_sessions):
                self._sessions.pop(next(iter(self._sessions)))  # free the oldest before allocating
            sess = DecodeSession(self.lm, batch, capacity, sampling, graphs=self.cuda_graphs, eos_slots=key[3])
        self._sessions[key] = sess  # most recently used last
        return sess

    def generate(self, prompt_or_messages, images=None, videos=None, *, stream: bool = False,
                 max_new_tokens: int = 256, enable_thinking: bool = False, fps: float = 2.0, **sampling):
        """Chat generation through the processor.

        prompt_or_messages: a user prompt (str), a chat (list of {"role", "content"} dicts), or a list of
        those for a batch. Media: a str prompt shows `images` then `videos` before its text; a chat carries
        its media in its content items ({"type": "image", "image": x}), or has media-less items
        ({"type": "image"}) that `images` / `videos` fill in order. For a batch, images / videos hold one
        list per prompt. A single image (path, PIL image, array) or video (file or frame directory) may stand
        for its one-item list. A video is a file (decoded with PyAV and sampled at `fps` as HF's Qwen3-VL
        video processor does: model.video), a directory of frames or a list of frames (taken as sampled at `fps`).
        Returns the answer text (a list of texts for a batch), or with stream=True (one prompt only) an
        iterator of text pieces. Sampling options as in `generate_ids`; timings go to `self.last_timings`.
        """
        from .processor import collect_media

        batched = isinstance(prompt_or_messages, (list, tuple)) and bool(prompt_or_messages) and \
            not isinstance(prompt_or_messages[0], dict)
        prompts = list(prompt_or_messages) if batched else [prompt_or_messages]
        if batched:
            images = [None] * len(prompts) if images is None else list(images)
            videos = [None] * len(prompts) if videos is None else list(videos)
            if len(images) != len(prompts) or len(videos) != len(prompts):
                raise ValueError("for a batch, images and videos must hold one list per prompt")
        else:
            images, videos = [images], [videos]
        proc = self.processor
        texts, all_images, all_videos = [], [], []
        for prompt, imgs, vids in zip(prompts, images, videos):
            imgs, vids = _media_list(imgs), _media_list(vids)
            if isinstance(prompt, str):
                content = [{"type": "image"} for _ in imgs] + [{"type": "video"} for _ in vids]
                messages = [{"role": "user", "content": content + [{"type": "text", "text": prompt}]}]
            else:
                messages = list(prompt)
                m_imgs, m_vids = collect_media(messages)
                if (imgs or vids) and (m_imgs or m_vids):
                    raise ValueError("give the images/videos either inside the messages or as arguments, not both")
                if not (imgs or vids):
                    imgs, vids = m_imgs, m_vids
            texts.append(proc.apply_chat_template(messages, add_generation_prompt=True,
                                                  enable_thinking=enable_thinking))
            all_images += imgs
            all_videos += vids
        if all_images or all_videos:
            self._need_vision()  # before any pixel is read
        inputs = proc(texts, images=all_images or None, videos=all_videos or None, fps=fps)
        S = inputs["input_ids"].shape[1]
        sampling.setdefault("eos_token_ids", tuple(sorted(set(self.eos_token_ids) | set(proc.eos_token_ids))))
        sampling.setdefault("pad_token_id", proc.pad_token_id)
        kwargs = dict(inputs, max_new_tokens=max_new_tokens, **sampling)

        if not stream:
            out = self.generate_ids(**kwargs)
            answers = [proc.decode(_strip(row[S:].tolist(), kwargs["eos_token_ids"])) for row in out]
            return answers if batched else answers[0]
        if batched:
            raise ValueError("stream=True takes one prompt, not a batch")
        return self._stream(kwargs, proc)

    def _stream(self, kwargs, proc):
        """Yield the answer text as it grows (whole characters only; stops at eos)."""
        stop = set(kwargs["eos_token_ids"])
        ids, sent = [], ""
        for tokens in self.generate_steps(**kwargs):
            t = int(tokens[0])
            if t in stop:
                break
            ids.append(t)
            text = proc.decode(ids)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                continue
            if len(text) > len(sent) and text.startswith(sent):
                yield text[len(sent):]
                sent = text
        text = proc.decode(ids)
        if len(text) > len(sent) and text.startswith(sent):
            yield text[len(sent):]


def _media_list(x) -> list:
    """One prompt's images or videos as a list: None -> [], a single path / image -> [it]."""
    import os

    import numpy as np
    import PIL.Image

    from .video import SampledVideo
    if x is None:
        return []
    if isinstance(x, (str, os.PathLike, PIL.Image.Image, np.ndarray, SampledVideo)):
        return [x]
    return list(x)


def _grid_list(grid) -> list[tuple[int, int, int]]:
    return [] if grid is None else [tuple(r) for r in torch.as_tensor(grid).tolist()]


def _strip(ids: list[int], eos) -> list[int]:
    """Generated ids up to (not including) the first eos (a stopped row holds only padding after it)."""
    out = []
    for t in ids:
        if t in eos:
            break
        out.append(t)
    return out


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A CPU tensor on `device`; to a GPU through pinned memory without a host wait (a pageable copy would wait
    for the device to finish everything queued before it)."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class _Stopwatch:
    """Time of a stretch of queued work: CUDA events on a GPU (no host wait; read `ms` once the work is done,
    or it waits for it), wall time on the CPU. 0.0 if never started."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self._t = None

    def start(self) -> None:
        if self.cuda:
            self._t = [torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)]
            self._t[0].record()
        else:
            self._t = [time.perf_counter(), None]

    def stop(self) -> None:
        if self.cuda:
            self._t[1].record()
        else:
            self._t[1] = time.perf_counter()

    @property
    def ms(self) -> float:
        if self._t is None:
            return 0.0
        if self.cuda:
            self._t[1].synchronize()
            return self._t[0].elapsed_time(self._t[1])
        return (self._t[1] - self._t[0]) * 1e3
