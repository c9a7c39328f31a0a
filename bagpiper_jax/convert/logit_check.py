"""``bagpiper-convert check``: our forward against an independent PyTorch forward of the same
weights, per stream (the anchor of MaxText's ``forward_pass_logit_checker``).

The torch side reads the reference-layout tensors (an ESPnet-native ``.pt``, a vLLM serving
directory, any ``to-torch`` output) into ``transformers.Qwen3ForCausalLM`` with the whole
unified vocabulary, and adds in torch what Bagpiper puts around it (docs/model.md): the
multi-stream input embedding (the sum of a frame's stream rows, a stream >= 1 holding pad
adding nothing), the continuous-audio adaptor (its frames replaced by ``Linear(features)``)
and the stream heads (stream 0 reads the final hidden state h, stream n >= 1 reads h + S[n],
through the shared lm_head; streams >= 1 over the audio range). It uses none of our model
code, and runs each packed example as a sequence of its own.

Both sides see the same seeded row: two examples packed back to back in the training
format (``data.template``) — user audio (continuous frames, fed random features of the
adaptor's width), assistant text then assistant audio (delay-interleaved codec frames) in
the first; user text, assistant audio in the second — then padding. Reported per stream
over the examples' frames: max |Δlogit| and KL(torch ‖ ours) of the softmax over the
stream's range (max and mean). Only ``model.*``, ``lm_head``, ``stream_emb`` and
``adaptor.*`` are read; the frozen codec and tower are not part of the forward.

Memory: the torch side runs first and is freed before ours is restored, so the peak is
one copy of the transformer in ``dtype`` (about 16.5 GB at 8B in bfloat16) plus the source
file's pages.
"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import torch
from flax import nnx
from jax.sharding import NamedSharding
from transformers import Qwen3Config, Qwen3ForCausalLM

from bagpiper_jax.audio_encoder.pieces import Continuous
from bagpiper_jax.checkpoint.hf_qwen3 import hf_config_dict
from bagpiper_jax.checkpoint.model_checkpoint import ParamsSource
from bagpiper_jax.checkpoint.tensor_reader import TensorReader
from bagpiper_jax.config import ModelConfig
from bagpiper_jax.convert.torch_layout import BAGPIPER_ONLY, model_entries, model_param_shapes, model_specs
from bagpiper_jax.data.records import PreparedExample, PreparedMessage
from bagpiper_jax.data.template import template
from bagpiper_jax.errors import BagpiperError
from bagpiper_jax.model.batch import Batch
from bagpiper_jax.sharding import batch_shards, logical_to_spec, make_mesh
from bagpiper_jax.vocab import Vocab

DTYPES = ("float32", "bfloat16")
DEFAULT_MAX_KL = {"float32": 1e-4, "bfloat16": 2e-2}  # bf16: both sides round differently
PADDING_FRAMES = 3


class LogitCheckError(BagpiperError):
    """The two forwards disagree beyond ``--max-kl`` on some stream."""


@dataclasses.dataclass(frozen=True)
class CheckRow:
    """One packed row of the check.

    ids: int32 ``[frames, streams]``; segments: ``[start, end)`` of each packed example (the
    rest is padding); continuous: int32 ``[n]`` row frames replaced by the adaptor's output
    for ``features`` float32 ``[n, continuous_dim]``.
    """

    ids: np.ndarray
    segments: tuple[tuple[int, int], ...]
    continuous: np.ndarray
    features: np.ndarray


def check_row(cfg: ModelConfig, seed: int = 0) -> CheckRow:
    """The check's row for a model of ``cfg`` (module docstring), from ``seed``."""
    vocab = Vocab.from_config(cfg)
    rng = np.random.default_rng(seed)

    def text(n):
        return rng.integers(0, vocab.text_size, n).astype(np.int32)

    def codes(n):
        return rng.integers(0, vocab.codebook_size, (n, vocab.num_streams)).astype(np.int32)

    examples = (
        (
            ("user", "audio", "mel", np.zeros((6, 1), np.float32)),
            ("assistant", "text", "text", text(8)),
            ("assistant", "audio", "codes", codes(6)),
        ),
        (("user", "text", "text", text(5)), ("assistant", "audio", "codes", codes(4))),
    )
    ids, segments, continuous = [], [], []
    start = 0
    for i, messages in enumerate(examples):
        ex = PreparedExample(f"check{i}", "dialogue", 0, tuple(PreparedMessage(*m) for m in messages))
        # one placeholder frame per "mel" frame: the features are drawn below, no tower runs
        out = template(ex, vocab, lambda n: n, piece_frames=1 << 20, mel_bins=1)
        for first, n in zip(out["mel_start"], out["mel_lengths"]):
            continuous.extend(range(start + first, start + first + n))
        ids.append(out["ids"])
        segments.append((start, start + len(out["ids"])))
        start += len(out["ids"])
    ids.append(np.zeros((PADDING_FRAMES, vocab.num_streams), np.int32))
    features = rng.standard_normal((len(continuous), cfg.continuous_dim)).astype(np.float32)
    return CheckRow(np.concatenate(ids), tuple(segments), np.asarray(continuous, np.int32), features)


@dataclasses.dataclass(frozen=True)
class StreamStats:
    """One stream's agreement over the examples' frames."""

    max_abs_diff: float
    max_kl: float
    mean_kl: float


def compare(reference: np.ndarray, ours: np.ndarray) -> StreamStats:
    """Logits ``[frames, range]`` of one stream: max |Δ| and KL(softmax(reference) ‖ softmax(ours))."""
    reference, ours = reference.astype(np.float64), ours.astype(np.float64)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    log_p, log_q = log_softmax(reference), log_softmax(ours)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    return StreamStats(float(np.abs(reference - ours).max()), float(kl.max()), float(kl.mean()))


def torch_logits(reader: TensorReader, cfg: ModelConfig, row: CheckRow, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference forward of ``row`` from the tensors of ``reader`` (module docstring).

    Returns float32 ``[frames, vocab]`` stream-0 logits and ``[frames, streams - 1,
    audio]`` logits of streams >= 1 (zero on padding frames).
    """
    vocab, torch_dtype = Vocab.from_config(cfg), getattr(torch, dtype)
    shapes = {s.name: s.shape for s in model_specs(model_entries(cfg), model_param_shapes(cfg))}
    tensors = {}
    for key, shape in shapes.items():
        tensors[key] = _to_torch(reader.view(key, shape)).to(torch_dtype)
        reader.release()
    config = Qwen3Config(**{**hf_config_dict(cfg, dtype), "vocab_size": vocab.size})
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    model.load_state_dict({k: v for k, v in tensors.items() if k.startswith(("model.", "lm_head."))}, assign=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # its buffers were built on meta
    model.eval()
    stream_emb, kernel, bias = (tensors[e.key] for e in BAGPIPER_ONLY)
    table, head = model.model.embed_tokens.weight, model.lm_head.weight
    audio_head = head[vocab.audio_offset : vocab.audio_offset + vocab.audio_size]
    frames, streams = row.ids.shape
    logits0 = np.zeros((frames, vocab.size), np.float32)
    logits_audio = np.zeros((frames, streams - 1, vocab.audio_size), np.float32)
    with torch.no_grad():
        adapted = torch.nn.functional.linear(torch.from_numpy(row.features).to(torch_dtype), kernel, bias)
        for start, end in row.segments:
            ids = torch.from_numpy(row.ids[start:end]).long()
            x = table[ids[:, 0]]
            for s in range(1, streams):
                x = x + torch.where((ids[:, s] != 0)[:, None], table[ids[:, s]], 0)
            inside = (row.continuous >= start) & (row.continuous < end)
            x[torch.from_numpy(row.continuous[inside] - start).long()] = adapted[torch.from_numpy(inside)]
            h = model.model(inputs_embeds=x[None], position_ids=torch.arange(end - start)[None]).last_hidden_state[0]
            logits0[start:end] = model.lm_head(h).float().numpy()
            hs = h[:, None, :] + stream_emb[None, 1:]
            logits_audio[start:end] = torch.nn.functional.linear(hs, audio_head).float().numpy()
    return logits0, logits_audio


def _to_torch(array: np.ndarray) -> torch.Tensor:
    """A host copy of a (memory-mapped) tensor as a torch tensor of its dtype."""
    if array.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(np.array(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(array))


def our_logits(source: ParamsSource, row: CheckRow, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Our forward of ``row`` (as a packed row, on the checkpoint config's mesh over all
    devices, params and compute in ``dtype``); outputs as :func:`torch_logits`."""
    runtime = dataclasses.replace(source.config.runtime, dtype=dtype, param_dtype=dtype)
    cfg = dataclasses.replace(source.config, runtime=runtime)
    mesh = make_mesh(cfg.mesh)
    graphdef, state = source.restore(cfg, mesh)
    rows = batch_shards(mesh, cfg.mesh.rules)  # the row repeated per batch shard
    frames = len(row.ids)
    segment_ids = np.zeros(frames, np.int32)
    positions = np.zeros(frames, np.int32)
    for i, (start, end) in enumerate(row.segments):
        segment_ids[start:end], positions[start:end] = i + 1, np.arange(end - start)

    def put(x):
        x = np.repeat(np.asarray(x)[None], rows, axis=0)
        return jax.device_put(x, NamedSharding(mesh, logical_to_spec(("activation_batch",), cfg.mesh.rules)))

    batch = Batch(put(row.ids), put(segment_ids), put(positions), put(np.zeros(row.ids.shape, np.float32)))
    continuous = Continuous(put(row.features), put(row.continuous))

    @jax.jit
    def forward(state, batch, continuous):
        model = nnx.merge(graphdef, state)
        return model.stream_logits(model.hidden_states(batch, continuous))

    with jax.set_mesh(mesh):
        logits0, logits_audio = forward(state, batch, continuous)
    valid = (segment_ids > 0)[:, None]
    return np.where(valid, np.asarray(logits0[0]), 0), np.where(valid[:, :, None], np.asarray(logits_audio[0]), 0)


def check(
    checkpoint: str | Path,
    torch_path: str | Path,
    step: int | None = None,
    dtype: str = "float32",
    max_kl: float | None = None,
    seed: int = 0,
) -> dict[int, StreamStats]:
    """Runs the check (module docstring); prints one line per stream and returns the stats.
    Raises :class:`LogitCheckError` when a stream's max KL exceeds ``max_kl`` (default
    :data:`DEFAULT_MAX_KL` of ``dtype``)."""
    if dtype not in DTYPES:
        raise LogitCheckError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    max_kl = DEFAULT_MAX_KL[dtype] if max_kl is None else max_kl
    source = ParamsSource(checkpoint, step)
    cfg = source.config.model
    row = check_row(cfg, seed)
    reference = torch_logits(TensorReader(torch_path), cfg, row, dtype)
    gc.collect()  # the torch model is gone before ours is restored
    ours = our_logits(source, row, dtype)
    frames = np.concatenate([np.arange(a, b) for a, b in row.segments])
    stats = {0: compare(reference[0][frames], ours[0][frames])}
    for s in range(1, cfg.num_streams):
        stats[s] = compare(reference[1][frames, s - 1], ours[1][frames, s - 1])
    print(f"logit check of {source.path} (step {source.step}) against {torch_path}: {len(frames)} frames, {dtype}")
    print("stream  max|Δlogit|     max KL    mean KL")
    for s, st in stats.items():
        print(f"{s:6d}  {st.max_abs_diff:11.3e}  {st.max_kl:9.3e}  {st.mean_kl:9.3e}")
    worst = max(stats, key=lambda s: stats[s].max_kl)
    if not stats[worst].max_kl <= max_kl:  # NaN fails too
        raise LogitCheckError(
            f"stream {worst}: KL divergence {stats[worst].max_kl:.3e} exceeds --max-kl {max_kl:g} "
            f"(max |Δlogit| {stats[worst].max_abs_diff:.3e})"
        )
    print(f"ok: every stream's KL divergence is at most --max-kl {max_kl:g}")
    return stats
