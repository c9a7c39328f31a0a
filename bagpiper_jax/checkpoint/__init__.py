"""The checkpoint and I/O layer: every on-disk format of weights this library reads or writes.

- :mod:`~.errors`: :class:`CheckpointError`;
- :mod:`~.tensor_reader` / :mod:`~.safetensors_writer` / :mod:`~.torch_writer`: streaming
  tensor files (safetensors; torch pickles read weights-only and written record by record);
- :mod:`~.lazy_save`: Orbax checkpoints written one param (chunk) at a time;
- :mod:`~.params_dir`: the params-directory format of converted weights;
- :mod:`~.frozen_modules`: the codec and audio tower params directories;
- :mod:`~.layout` / :mod:`~.hf_qwen3`: reading params from PyTorch tensors shard by shard,
  and HF Qwen3 directories as a source of Bagpiper params;
- :mod:`~.model_checkpoint`: model checkpoints and :class:`ParamsSource` (the params of
  any checkpoint);
- :mod:`~.run`: a training run's checkpoints (train state, data iterator, metadata).
"""

from bagpiper_jax.checkpoint.errors import CheckpointError

__all__ = ["CheckpointError"]
