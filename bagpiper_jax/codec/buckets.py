"""Padded lengths: few compiled shapes for clips of any length."""

from __future__ import annotations


def bucket_frames(frames: int, min_frames: int = 8) -> int:
    """Smallest ``m * 2**e >= frames`` with ``m`` in [8, 16) (and ``>= min_frames``): at most
    ~12.5% padding, a logarithmic number of shapes, and ``2**e`` divides it."""
    frames = max(frames, min_frames)
    e = max(0, frames.bit_length() - 4)
    return -(-frames // 2**e) * 2**e
