"""Test setup: 8 simulated CPU devices (set before jax is imported) and fp32 matmuls."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are reused across tests and the test's own subprocesses (bagpiper-train).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/bagpiper-jax-test-cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import pytest


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small prepared demo corpus (shared by the data and training tests)."""
    from helpers import demo_config

    from bagpiper_jax.data.demo import ensure_demo_prepared

    root = tmp_path_factory.mktemp("demo")
    ensure_demo_prepared(demo_config(root))  # 64 + 8 examples (demo_overrides)
    return root
