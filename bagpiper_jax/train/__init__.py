"""Training: optimizer, sharded train/eval steps, Orbax checkpoints, the trainer loop."""
