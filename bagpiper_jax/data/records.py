"""Self-describing prepared-example records (the values stored in ArrayRecord shards).

A record is a msgpack map::

    {"id": str, "task": str, "frames": int,
     "messages": [{"role": str, "modality": str, "kind": "text" | "codes" | "mel", "array": ARRAY}]}

where ARRAY is ``{"dtype": str, "shape": [...], "data": bytes}``: text token ids int32
``[tokens]``, codec codes int16 ``[codec_frames, streams]`` (assistant audio), or log-mel
float32 ``[mel_frames, mel_bins]`` (user/system audio). ``frames`` is the example's length
in multi-stream frames once templated (see :mod:`bagpiper_jax.data.template`).
"""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np

from bagpiper_jax.errors import BagpiperError

KINDS = ("text", "codes", "mel")


class RecordError(BagpiperError):
    """A stored record cannot be decoded; the message says why."""


@dataclasses.dataclass(frozen=True)
class PreparedMessage:
    """One prepared message: ``kind`` text (token ids), codes (``[frames, streams]``) or mel."""

    role: str
    modality: str
    kind: str
    array: np.ndarray


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
                for m in ex.messages
            ],
        },
        use_bin_type=True,
    )


def decode_record(data: bytes) -> PreparedExample:
    try:
        d = msgpack.unpackb(data, raw=False)
        messages = tuple(
            PreparedMessage(m["role"], m["modality"], m["kind"], _unpack_array(m["array"])) for m in d["messages"]
        )
        return PreparedExample(d["id"], d["task"], int(d["frames"]), messages)
    except (msgpack.UnpackException, KeyError, TypeError, ValueError) as e:
        raise RecordError(f"malformed prepared record: {e}") from e
