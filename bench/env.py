"""The machine a benchmark ran on: Python, package versions, JAX's devices, torch's CUDA
device, the NVIDIA driver and the source commit; one JSON line.

Every field is read, never assumed: a package that is not installed is ``null``, as are
torch's and the driver's fields on a machine without them.

    python bench/env.py
"""

import importlib.metadata
import json
import platform
import subprocess

import jax

PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "numpy",
    "torch",
    "transformers",
    "tokenizers",
)


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def command_output(*argv: str) -> str | None:
    """First line of ``argv``'s stdout, or None when it is missing or fails."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def torch_fields() -> dict:
    try:
        import torch  # optional: the JAX-only benchmarks run without it
    except ImportError:
        return {"torch_cuda": None, "torch_device": None}
    cuda = torch.cuda.is_available()
    return {
        "torch_cuda": torch.version.cuda,
        "torch_device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }


def main():
    devices = jax.devices()
    commit = command_output("git", "rev-parse", "HEAD")
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: version(name) for name in PACKAGES},
        "jax_backend": jax.default_backend(),
        "device": devices[0].device_kind,
        "devices": len(devices),
        **torch_fields(),
        "nvidia_driver": command_output("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"),
        "commit": commit,
        # Uncommitted changes to tracked files (null outside a git checkout).
        "dirty": None if commit is None else bool(command_output("git", "status", "--porcelain", "-uno")),
    }
    print(json.dumps(env), flush=True)


if __name__ == "__main__":
    main()
