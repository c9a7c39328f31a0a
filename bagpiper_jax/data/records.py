"""Self-describing prepared-example records (the values stored in ArrayRecord shards).

A record is a msgpack map::

    {"id": str, "task": str, "frames": int,
     "messages": [{"role": str, "modality": str, "kind": KIND, "array": ARRAY[, "samples": int]}]}

where ARRAY is ``{"dtype": str, "shape": [...], "data": bytes}`` and KIND says what it holds:

- ``text``: token ids int32 ``[tokens]``;
- ``codes``: codec codes int16 ``[codec_frames, streams]`` (assistant audio);
- ``flac``: user/system audio as FLAC bytes uint8 ``[bytes]`` of a 16 kHz clip of
  ``samples`` samples (``audio_io.encode_flac``; log-mel is computed when the record is
  used: a quarter to a half of the bytes of float32 log-mel, and lossless for 16-bit
  sources);
- ``mel``: log-mel float32 ``[mel_frames, mel_bins]`` (user audio as corpora prepared
  before ``flac`` stored it; still read).

``frames`` is the example's length in multi-stream frames once templated (see
:mod:`bagpiper_jax.data.template`).
"""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np

from bagpiper_jax.audio_encoder.features import log_mel, num_frames
from bagpiper_jax.audio_io import decode_flac
from bagpiper_jax.errors import BagpiperError

KINDS = ("text", "codes", "flac", "mel")
CONTINUOUS_KINDS = ("flac", "mel")  # user/system audio: encoder features in the model


class RecordError(BagpiperError):
    """A stored record cannot be decoded; the message says why."""


@dataclasses.dataclass(frozen=True)
class PreparedMessage:
    """One prepared message: ``kind`` text (token ids), codes (``[frames, streams]``), flac
    (audio bytes of ``samples`` samples) or mel (``[frames, mel_bins]``)."""

    role: str
    modality: str
    kind: str
    array: np.ndarray
    samples: int = 0  # kind "flac": samples of the 16 kHz clip

    @property
    def mel_frames(self) -> int:
        """Log-mel frames of a continuous-audio message."""
        return len(self.array) if self.kind == "mel" else int(num_frames(self.samples))

    def log_mel(self, n_mels: int) -> np.ndarray:
        """The message's log-mel ``[mel_frames, n_mels]`` (computed for ``flac``)."""
        if self.kind == "mel":
            return np.asarray(self.array, np.float32)
        return log_mel(decode_flac(self.array.tobytes()), n_mels)


@dataclasses.dataclass(frozen=True)
class PreparedExample:
    """One prepared example (a stored record); ``frames``: its length once templated."""

    id: str
    task: str
    frames: int
    messages: tuple[PreparedMessage, ...]


def _pack_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def _unpack_array(d: dict) -> np.ndarray:
    return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"])


def encode_record(ex: PreparedExample) -> bytes:
    return msgpack.packb(
        {
            "id": ex.id,
            "task": ex.task,
            "frames": int(ex.frames),
            "messages": [
                {"role": m.role, "modality": m.modality, "kind": m.kind, "array": _pack_array(m.array)}
                | ({"samples": int(m.samples)} if m.kind == "flac" else {})
                for m in ex.messages
            ],
        },
        use_bin_type=True,
    )


def decode_record(data: bytes) -> PreparedExample:
    try:
        d = msgpack.unpackb(data, raw=False)
        messages = tuple(
            PreparedMessage(m["role"], m["modality"], m["kind"], _unpack_array(m["array"]), m.get("samples", 0))
            for m in d["messages"]
        )
        return PreparedExample(d["id"], d["task"], int(d["frames"]), messages)
    except (msgpack.UnpackException, KeyError, TypeError, ValueError) as e:
        raise RecordError(f"malformed prepared record: {e}") from e
