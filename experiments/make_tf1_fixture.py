"""Writes tests/data/tf1_release: a tiny random ALBERT saved by TensorFlow as the original release
does, and the outputs transformers computes from it after its own TF1 loader. Run once, with
TensorFlow in a venv of its own (it is no dependency of albert-jax, nor of its tests):

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu 'transformers>=4.46,<5' torch==2.13.0 numpy \
        sentencepiece absl-py
    PYTHONPATH=. /tmp/tfvenv/bin/python experiments/make_tf1_fixture.py

Writes, under tests/data/tf1_release/:
  albert_config.json, model.ckpt-best.{index,data-00000-of-00001}, 30k-clean.{model,vocab}
      a release directory: the original's variable names (tf.compat.v1 Saver), Adam slots and
      global_step beside them, the config in the original's format ("gelu", the extra keys)
  hub/variables/variables.{index,data-00000-of-00001}, hub/assets/30k-clean.model
      the same model as a TF-Hub module lays it out (variables under module/, no config)
  reference.npz  inputs and transformers' outputs (AlbertForPreTraining after
      load_tf_weights_in_albert, with the original's tanh "gelu" as gelu_new)
and tests/data/tf1_dtypes/: one variable per dtype, a string and a partitioned variable, with the
values TensorFlow was given (values.npz), for the reader's own tests.
"""

import itertools
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
import torch
import transformers

from albert_jax.data import corpus
from albert_jax.data.train_tokenizer import train_spm

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "tf1_release"
DTYPES_OUT = REPO / "tests" / "data" / "tf1_dtypes"
VOCAB = 100

# The original's format: what google-research/albert's albert_config.json files hold. Two groups
# of two inner layers, so that the group and inner-group indices of the names are both exercised.
CONFIG = {
    "attention_probs_dropout_prob": 0, "hidden_act": "gelu", "hidden_dropout_prob": 0,
    "embedding_size": 8, "hidden_size": 12, "initializer_range": 0.02, "intermediate_size": 24,
    "max_position_embeddings": 32, "num_attention_heads": 2, "num_hidden_layers": 4,
    "num_hidden_groups": 2, "net_structure_type": 0, "gap_size": 0, "num_memory_blocks": 0,
    "inner_group_num": 2, "down_scale_factor": 1, "type_vocab_size": 2, "vocab_size": VOCAB,
    "layers_to_keep": [],
}


def original_variables(c, rs):
  """name -> array for every variable of modeling.py + run_pretraining.py's heads."""
  E, H, I, V = c["embedding_size"], c["hidden_size"], c["intermediate_size"], c["vocab_size"]
  shapes = {
      "bert/embeddings/word_embeddings": [V, E],
      "bert/embeddings/token_type_embeddings": [c["type_vocab_size"], E],
      "bert/embeddings/position_embeddings": [c["max_position_embeddings"], E],
      "bert/embeddings/LayerNorm/gamma": [E], "bert/embeddings/LayerNorm/beta": [E],
      "bert/encoder/embedding_hidden_mapping_in/kernel": [E, H],
      "bert/encoder/embedding_hidden_mapping_in/bias": [H],
  }
  for g in range(c["num_hidden_groups"]):
    for i in range(c["inner_group_num"]):
      p = f"bert/encoder/transformer/group_{g}/inner_group_{i}"
      for proj in ("query", "key", "value"):
        shapes[f"{p}/attention_1/self/{proj}/kernel"] = [H, H]
        shapes[f"{p}/attention_1/self/{proj}/bias"] = [H]
      shapes.update({
          f"{p}/attention_1/output/dense/kernel": [H, H], f"{p}/attention_1/output/dense/bias": [H],
          f"{p}/LayerNorm/gamma": [H], f"{p}/LayerNorm/beta": [H],
          f"{p}/ffn_1/intermediate/dense/kernel": [H, I],
          f"{p}/ffn_1/intermediate/dense/bias": [I],
          f"{p}/ffn_1/intermediate/output/dense/kernel": [I, H],
          f"{p}/ffn_1/intermediate/output/dense/bias": [H],
          f"{p}/LayerNorm_1/gamma": [H], f"{p}/LayerNorm_1/beta": [H],
      })
  shapes.update({
      "bert/pooler/dense/kernel": [H, H], "bert/pooler/dense/bias": [H],
      "cls/predictions/transform/dense/kernel": [H, E],
      "cls/predictions/transform/dense/bias": [E],
      "cls/predictions/transform/LayerNorm/gamma": [E],
      "cls/predictions/transform/LayerNorm/beta": [E],
      "cls/predictions/output_bias": [V],
      "cls/seq_relationship/output_weights": [2, H], "cls/seq_relationship/output_bias": [2],
  })
  out = {}
  for name, shape in shapes.items():
    scale = 0.1 if name.endswith(("bias", "beta")) else 0.3
    value = rs.normal(0, scale, shape)
    out[name] = (value + 1 if name.endswith("gamma") else value).astype(np.float32)
  return out


def save_tf1(variables: dict, prefix: Path):
  """Saves `variables` (name -> array) with tf.compat.v1's Saver under exactly those names."""
  with tf.Graph().as_default():
    tf_vars = {name: tf.compat.v1.Variable(value, name=name.replace("/", "_"))
               for name, value in variables.items()}
    saver = tf.compat.v1.train.Saver(var_list=tf_vars)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      saver.save(sess, str(prefix), write_meta_graph=False, write_state=False)


def reference_outputs(prefix: Path, config: dict, inputs: dict) -> dict:
  """transformers' outputs after its own TF1 loader (which needs TensorFlow)."""
  hf_config = transformers.AlbertConfig(**{k: v for k, v in config.items()
                                           if k not in ("hidden_act", "layers_to_keep")},
                                        hidden_act="gelu_new")  # the original's gelu is tanh
  torch.manual_seed(0)
  model = transformers.AlbertForPreTraining(hf_config)
  before = {k: v.clone() for k, v in model.named_parameters()}
  transformers.load_tf_weights_in_albert(model, hf_config, str(prefix))
  # The loader skips names it does not know without a word: every weight must have been set.
  unset = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
  assert not unset, f"transformers' loader left {unset} at their random init"
  model.eval()
  feed = {k: torch.from_numpy(v).long() for k, v in inputs.items()}
  with torch.no_grad():
    out = model(**feed, output_hidden_states=True)
    base = model.albert(**feed)
  return {"prediction_logits": out.prediction_logits.numpy(), "sop_logits": out.sop_logits.numpy(),
          "last_hidden_state": base.last_hidden_state.numpy(),
          "pooler_output": base.pooler_output.numpy(),
          **{f"hidden_states_{i}": h.numpy() for i, h in enumerate(out.hidden_states)}}


def make_release():
  if OUT.exists():
    shutil.rmtree(OUT)
  OUT.mkdir(parents=True)
  (OUT / "albert_config.json").write_text(json.dumps(CONFIG, indent=2, sort_keys=True) + "\n")

  sentences = itertools.islice((s for doc in corpus.embedded_documents("train") for s in doc),
                               5000)
  with tempfile.TemporaryDirectory() as tmp:
    # No NFKC table: it alone is 240 KB; our tokenizer normalises the text itself anyway.
    model = train_spm(sentences, VOCAB, tmp, input_sentence_size=5000,
                      normalization_rule_name="identity")
    shutil.copyfile(model, OUT / "30k-clean.model")
    shutil.copyfile(Path(tmp) / "spiece.vocab", OUT / "30k-clean.vocab")

  rs = np.random.RandomState(0)
  variables = original_variables(CONFIG, rs)
  training = {"global_step": np.int64(125000)}
  for name in ("bert/pooler/dense/bias", "cls/seq_relationship/output_bias",
               "bert/embeddings/LayerNorm/gamma"):  # a few optimizer slots, as releases carry
    training[f"{name}/adam_m"] = rs.normal(0, 1e-3, variables[name].shape).astype(np.float32)
    training[f"{name}/adam_v"] = rs.uniform(0, 1e-6, variables[name].shape).astype(np.float32)
  save_tf1({**variables, **training}, OUT / "model.ckpt-best")

  hub = OUT / "hub"
  (hub / "variables").mkdir(parents=True)
  (hub / "assets").mkdir()
  save_tf1({f"module/{k}": v for k, v in variables.items()}, hub / "variables" / "variables")
  shutil.copyfile(OUT / "30k-clean.model", hub / "assets" / "30k-clean.model")

  ids = rs.randint(5, VOCAB, (3, 13))
  mask = np.ones_like(ids)
  mask[1, 9:] = 0
  mask[2, 12:] = 0
  types = np.zeros_like(ids)
  types[:, 6:] = 1
  inputs = {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
            "token_type_ids": types.astype(np.int32)}
  reference = reference_outputs(OUT / "model.ckpt-best", CONFIG, inputs)
  from_hub = reference_outputs(hub / "variables" / "variables", CONFIG, inputs)
  for key in reference:  # transformers reads the TF-Hub layout (module/ names) the same way
    np.testing.assert_array_equal(reference[key], from_hub[key], err_msg=key)
  np.savez(OUT / "reference.npz", **inputs, **reference)


def make_dtypes():
  """One variable per dtype TF writes plainly, a string and a partitioned variable."""
  if DTYPES_OUT.exists():
    shutil.rmtree(DTYPES_OUT)
  DTYPES_OUT.mkdir(parents=True)
  rs = np.random.RandomState(1)
  values = {
      "float32": rs.normal(size=(2, 3)).astype(np.float32),
      "float64": rs.normal(size=(3,)),
      "float16": rs.normal(size=(2, 2)).astype(np.float16),
      "bfloat16": rs.normal(size=(3, 1)).astype(np.float32),  # rounded to bfloat16 by TF
      "int32": rs.randint(-2**31, 2**31 - 1, (4,)).astype(np.int32),
      "int64": np.array([-2**62, 7, 2**40], np.int64),
      "int8": np.array([-128, 0, 127], np.int8),
      "uint8": np.array([0, 200, 255], np.uint8),
      "bool": np.array([True, False, True]),
      "scalar": np.float32(3.25),
      "empty": np.zeros((0, 4), np.float32),
      "deep/scope/name_with_digits_12": rs.normal(size=(2, 2, 2)).astype(np.float32),
  }
  with tf.Graph().as_default():
    tf_vars = {}
    for name, value in values.items():
      dtype = tf.bfloat16 if name == "bfloat16" else None
      tf_vars[name] = tf.compat.v1.Variable(value, dtype=dtype, name=name.replace("/", "_"))
    tf_vars["string"] = tf.compat.v1.Variable([b"a", b"bc"], name="string")
    partitioned = tf.compat.v1.get_variable(
        "sliced", shape=[4, 3], initializer=tf.compat.v1.ones_initializer(),
        partitioner=tf.compat.v1.fixed_size_partitioner(2))
    saver = tf.compat.v1.train.Saver(var_list={**tf_vars, "sliced": partitioned})
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      saver.save(sess, str(DTYPES_OUT / "model.ckpt"), write_meta_graph=False, write_state=False)
      bf16 = sess.run(tf.cast(tf_vars["bfloat16"], tf.float32))
  values["bfloat16"] = bf16
  reader = tf.train.load_checkpoint(str(DTYPES_OUT / "model.ckpt"))
  print("TF lists:", sorted(reader.get_variable_to_shape_map()))
  np.savez(DTYPES_OUT / "values.npz", **{k.replace("/", "."): v for k, v in values.items()})


def main():
  tf.compat.v1.disable_eager_execution()
  make_release()
  make_dtypes()
  size = sum(p.stat().st_size for d in (OUT, DTYPES_OUT) for p in d.rglob("*") if p.is_file())
  print(f"wrote {OUT} and {DTYPES_OUT}: {size / 1024:.0f} KiB")
  return 0


if __name__ == "__main__":
  sys.exit(main())
