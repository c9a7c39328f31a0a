"""Weight import/export between HF / PyTorch layouts and bagpiper-jax params."""
