"""The checkpoint formats albert-jax reads and writes, one reader each, none calling another:

  hf.py           Hugging Face directories (config.json + safetensors or pytorch_model.bin)
  model_dir.py    albert-jax model directories and training runs (Orbax)
  tf1.py          the original TF1 releases and TF-Hub modules, as HF state dicts
  tensorbundle.py TF1 checkpoints (TensorBundle) read without TensorFlow
  table.py        the Flax <-> HF key table both HF and TF1 readers map through; the tree flattener

Each reader returns (config, params, the head the checkpoint holds). Deciding what a path holds
and re-heading the parameters happen in one place, `albert_jax.init_from` (the door).
"""
