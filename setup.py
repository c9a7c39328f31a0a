from setuptools import find_packages, setup

# Compatible ranges: the lower bounds are the versions CI tests (constraints.txt pins them
# exactly). Grain and Orbax may move further: bagpiper_jax/compat.py checks the release
# series of the private APIs it uses and falls back to their public API.
setup(
    name="bagpiper_jax",
    version="0.1.0",
    description="JAX/TPU library for Bagpiper, the 8B multi-stream audio foundation model.",
    packages=find_packages(include=["bagpiper_jax", "bagpiper_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.14",
        "grain>=0.2.18,<0.4",
        "tensorstore>=0.1.86,<0.2",
        "librosa>=0.11.0,<0.12",
        "tokenizers>=0.23.3,<1",
        "safetensors>=0.8.0,<1",
        "soundfile>=0.14.0,<1",
        "soxr>=0.5",
        "array-record>=0.8",
        "msgpack>=1.0",
        "absl-py>=2.0",
        "etils>=1.7",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "numpy>=2.0",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "threadpoolctl>=3.1",
    ],
    extras_require={
        # torch's CPU wheel 2.13.0 is what CI installs (constraints.txt); transformers only
        # for parity tests and conversion.
        "test": ["torch>=2.13.0", "transformers>=5.24.0,<6", "pytest>=8", "ruff>=0.17", "jiwer>=4.0.0"],
        "convert": ["torch>=2.13.0", "transformers>=5.24.0,<6"],
        # bagpiper-eval's TTS items: WER (and the ASR model through transformers).
        "eval": ["torch>=2.13.0", "transformers>=5.24.0,<6", "jiwer>=4.0.0"],
        # libtpu: TPU hosts, and AOT compiles for a TPU topology on any host (bench/compile_tpu.py,
        # the slow tests/test_tpu_aot.py). Set JAX_PLATFORMS=cpu on a host without TPUs.
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    },
    entry_points={
        "console_scripts": [
            "bagpiper-train=bagpiper_jax.cli.train:main",
            "bagpiper-prepare=bagpiper_jax.cli.prepare:main",
            "bagpiper-codec=bagpiper_jax.cli.codec:main",
            "bagpiper-convert=bagpiper_jax.cli.convert:main",
            "bagpiper-audio-features=bagpiper_jax.cli.audio_features:main",
            "bagpiper-generate=bagpiper_jax.cli.generate:main",
            "bagpiper-eval=bagpiper_jax.cli.eval:main",
        ],
    },
)
