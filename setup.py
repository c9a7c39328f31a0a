from setuptools import find_packages, setup

setup(
    name="bagpiper_jax",
    version="0.1.0",
    description="JAX/TPU library for Bagpiper, the 8B multi-stream audio foundation model.",
    packages=find_packages(include=["bagpiper_jax", "bagpiper_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "grain==0.2.18",
        "tensorstore==0.1.86",
        "librosa==0.11.0",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
        "soundfile==0.14.0",
        "soxr>=0.5",
        "array-record>=0.8",
        "msgpack>=1.0",
        "absl-py>=2.0",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "numpy>=2.0",
        "pyyaml>=6.0",
        "tqdm>=4.66",
    ],
    extras_require={
        # torch's CPU wheel for 2.13.0 is what CI installs; transformers only for parity tests
        # and conversion.
        "test": ["torch==2.13.0", "transformers==5.24.0", "pytest>=8"],
        "convert": ["torch==2.13.0", "transformers==5.24.0"],
        # libtpu: TPU hosts, and AOT compiles for a TPU topology on any host (bench/compile_tpu.py,
        # the slow tests/test_tpu_aot.py). Set JAX_PLATFORMS=cpu on a host without TPUs.
        "tpu": ["jax[tpu]==0.10.2"],
    },
    entry_points={
        "console_scripts": [
            "bagpiper-train=bagpiper_jax.cli.train:main",
            "bagpiper-prepare=bagpiper_jax.cli.prepare:main",
            "bagpiper-codec=bagpiper_jax.cli.codec:main",
            "bagpiper-convert=bagpiper_jax.cli.convert:main",
            "bagpiper-audio-features=bagpiper_jax.cli.audio_features:main",
            "bagpiper-generate=bagpiper_jax.cli.generate:main",
        ],
    },
)
