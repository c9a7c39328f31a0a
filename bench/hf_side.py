"""Options shared by the benchmarks that time a module against its HF torch anchor."""

import argparse
import json

import jax
import torch


def add_hf_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--torch-device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="device of the HF torch side (auto: cuda when JAX runs on a GPU and torch has one, else cpu)",
    )
    p.add_argument(
        "--hf-config",
        type=json.loads,
        default={},
        help="JSON of HF config fields over the full-size default (e.g. a tiny model for a rehearsal)",
    )


def torch_device(choice: str) -> str:
    """The torch device for ``--torch-device``; an error when ``cuda`` is asked for and
    torch has none (a CPU torch beside a GPU JAX would time the wrong thing)."""
    if choice == "auto":
        return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--torch-device cuda: torch {torch.__version__} sees no CUDA device")
    return choice
