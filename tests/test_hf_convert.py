"""Hugging Face conversion against transformers itself: outputs, loading info, bad input."""

import json
import logging
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.numpy
import sentencepiece as spm
import torch
import transformers

import albert_jax
from helpers import perturb, random_params
from albert_jax import files, hf_convert
from albert_jax.checkpoints import model_dir
from albert_jax import model as M

TINY = M.AlbertConfig(vocab_size=97, embedding_size=8, hidden_size=16, num_hidden_layers=3,
                      num_attention_heads=2, intermediate_size=24, num_labels=3)
GROUPED = M.AlbertConfig(vocab_size=97, embedding_size=12, hidden_size=24, num_hidden_layers=4,
                         num_hidden_groups=2, inner_group_num=2, num_attention_heads=3,
                         intermediate_size=40, hidden_act="gelu", num_labels=2)
CONFIGS = {"tiny": TINY, "grouped": GROUPED}
# The heads transformers has a class for (squad_v2_original: tests/test_squad_v2_original.py).
HF_HEADS = sorted(h for h in M.HEADS if M.has_hf_class(h))
OUTPUT_FIELDS = ("last_hidden_state", "pooler_output", "prediction_logits", "sop_logits",
                 "logits", "start_logits", "end_logits")


def _config_for(cfg, head):
  return cfg.replace(num_labels=2) if head == "question_answering" else cfg


def _inputs(cfg, head, batch=3, length=11, seed=0):
  """Random ids with padding in the attention mask and both token types."""
  rs = np.random.RandomState(seed)
  ids = rs.randint(5, cfg.vocab_size, (batch, length))
  mask = np.ones_like(ids)
  mask[1, length - 4:] = 0
  mask[-1, length - 1:] = 0
  types = np.zeros_like(ids)
  types[:, length // 2:] = 1
  if head == "multiple_choice":  # [batch, choices, length]
    ids, mask, types = (np.stack([x, np.roll(x, 1, axis=0)], 1) for x in (ids, mask, types))
  return ids.astype(np.int32), mask.astype(np.int32), types.astype(np.int32)


def _perturb_torch(model, seed, scale=0.1):
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * scale)
  return model.eval()


def _hf_class(head):
  return getattr(transformers, M.HEADS[head][1])


def _hf_outputs(model, ids, mask, types):
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
                token_type_ids=torch.from_numpy(types).long(), output_hidden_states=True)
  return out


def _assert_outputs_match(ours, theirs, atol=1e-5):
  compared = 0
  for field in OUTPUT_FIELDS:
    if getattr(ours, field, None) is not None:
      np.testing.assert_allclose(np.asarray(getattr(ours, field)), theirs[field].numpy(),
                                 atol=atol, rtol=0, err_msg=field)
      compared += 1
  assert compared
  for mine, ref in zip(ours.hidden_states, theirs.hidden_states, strict=True):
    np.testing.assert_allclose(np.asarray(mine), ref.numpy(), atol=atol, rtol=0)


def _apply(module, params, ids, mask, types):
  return jax.jit(module.apply, static_argnames="output_hidden_states")(
      {"params": params}, ids, attention_mask=mask, token_type_ids=types,
      output_hidden_states=True)


def _no_loading_issues(info):
  return {k: v for k, v in info.items() if v} == {}


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("head", HF_HEADS)
def test_ours_to_hf_matches_transformers(tmp_path, head, config_name):
  cfg = _config_for(CONFIGS[config_name], head)
  module = M.make_model(cfg, head)
  params = random_params(cfg, head, 2)
  hf_convert.save(cfg, params, tmp_path / "hf", head=head)
  model, info = _hf_class(head).from_pretrained(tmp_path / "hf", output_loading_info=True)
  assert _no_loading_issues(info), info
  inputs = _inputs(cfg, head)
  _assert_outputs_match(_apply(module, params, *inputs), _hf_outputs(model.eval(), *inputs))


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("head", HF_HEADS)
def test_hf_to_ours_matches_transformers(tmp_path, head, config_name):
  cfg = _config_for(CONFIGS[config_name], head)
  torch.manual_seed(0)
  model = _perturb_torch(_hf_class(head)(transformers.AlbertConfig(**cfg.to_hf_dict())), 3)
  model.save_pretrained(tmp_path / "hf")
  module, params = albert_jax.from_pretrained(tmp_path / "hf")
  assert type(module) is M.HEADS[head][0] and module.config == cfg
  inputs = _inputs(cfg, head)
  _assert_outputs_match(_apply(module, params, *inputs), _hf_outputs(model, *inputs))


@pytest.mark.parametrize("head", ["pretraining", "question_answering"])
def test_albert_large_v2_shapes_both_ways(tmp_path, head):
  cfg = M.preset("large-v2")
  torch.manual_seed(0)
  # Realistic weight scales: at 5x the init scale, float32 itself (torch's as much as ours)
  # drifts 3e-5 from a float64 reference over 24 layers of width 1024.
  model = _perturb_torch(_hf_class(head)(transformers.AlbertConfig(**cfg.to_hf_dict())), 4,
                         scale=0.02)
  model.save_pretrained(tmp_path / "hf")
  config, params, loaded_head = hf_convert.load(tmp_path / "hf")
  assert (config, loaded_head) == (cfg, head)
  module = M.make_model(cfg, head)
  inputs = _inputs(cfg, head, batch=2, length=16)
  _assert_outputs_match(_apply(module, params, *inputs), _hf_outputs(model, *inputs))
  # ... and back: our export loads into transformers with nothing missing and the same outputs.
  hf_convert.save(cfg, params, tmp_path / "back")
  again, info = _hf_class(head).from_pretrained(tmp_path / "back", output_loading_info=True)
  assert _no_loading_issues(info), info
  for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
    assert k == k2 and torch.equal(a, b), k


def test_gradients_match_pytorch(tmp_path):
  cfg = GROUPED
  module = M.AlbertForPreTraining(cfg)
  params = random_params(cfg, "pretraining", 5)
  hf_convert.save(cfg, params, tmp_path / "hf")
  model = transformers.AlbertForPreTraining.from_pretrained(tmp_path / "hf").eval()
  ids, mask, types = _inputs(cfg, "pretraining")
  rs = np.random.RandomState(0)
  w_mlm = rs.normal(size=(*ids.shape, cfg.vocab_size)).astype(np.float32)
  w_sop = rs.normal(size=(ids.shape[0], 2)).astype(np.float32)

  def loss(p):
    out = module.apply({"params": p}, ids, attention_mask=mask, token_type_ids=types)
    return (out.prediction_logits * w_mlm).sum() + (out.sop_logits * w_sop).sum()

  grads = hf_convert.to_hf_state_dict(cfg, jax.jit(jax.grad(loss))(params), "pretraining")
  out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
              token_type_ids=torch.from_numpy(types).long())
  ((out.prediction_logits * torch.from_numpy(w_mlm)).sum()
   + (out.sop_logits * torch.from_numpy(w_sop)).sum()).backward()
  theirs = dict(model.named_parameters())
  assert grads.keys() == theirs.keys() - {"predictions.decoder.weight", "predictions.decoder.bias"}
  for key, g in grads.items():
    np.testing.assert_allclose(g, theirs[key].grad.numpy(), atol=5e-5, rtol=1e-4, err_msg=key)


# ----------------------------------------------------------------------------- round trips

def test_flax_hf_flax_is_bit_exact(tmp_path):
  for head in HF_HEADS:
    cfg = _config_for(GROUPED, head)
    params = random_params(cfg, head, 1)
    hf_convert.save(cfg, params, tmp_path / head, head=head)
    config, back, loaded_head = hf_convert.load(tmp_path / head)
    assert (config, loaded_head) == (cfg, head)
    assert hf_convert.flatten(back).keys() == hf_convert.flatten(params).keys()
    for (k, a), b in zip(hf_convert.flatten(params).items(), hf_convert.flatten(back).values()):
      assert np.array_equal(a, b) and b.dtype == np.float32, k


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "albert_jax.hf_convert", *map(str, args)],
                        capture_output=True, text=True, timeout=300)


def test_cli_orbax_hf_orbax_is_bit_exact(tmp_path):
  cfg = GROUPED
  params = random_params(cfg, "pretraining", 6)
  model_dir.save_model_dir(tmp_path / "orbax", cfg, params, "pretraining")
  run = _cli("orbax-to-hf", tmp_path / "orbax", tmp_path / "hf")
  assert run.returncode == 0, run.stderr
  assert "pretraining head" in run.stdout
  run = _cli("hf-to-orbax", tmp_path / "hf", tmp_path / "orbax2")
  assert run.returncode == 0, run.stderr
  config, back, head = model_dir.load_model_dir(tmp_path / "orbax2")
  assert (config, head) == (cfg, "pretraining")
  for (k, a), b in zip(hf_convert.flatten(params).items(), hf_convert.flatten(back).values()):
    assert np.array_equal(a, b), k
  # The HF directory in between is what transformers loads without complaint.
  _, info = transformers.AlbertForPreTraining.from_pretrained(tmp_path / "hf",
                                                              output_loading_info=True)
  assert _no_loading_issues(info)


def test_from_pretrained_reads_orbax_and_hf_directories_alike(tmp_path):
  cfg = TINY
  params = random_params(cfg, "masked_lm", 7)
  model_dir.save_model_dir(tmp_path / "orbax", cfg, params, "masked_lm")
  hf_convert.save(cfg, params, tmp_path / "hf", head="masked_lm")
  ids = _inputs(cfg, "masked_lm")
  outs = []
  for d in ("orbax", "hf"):
    module, loaded = albert_jax.from_pretrained(tmp_path / d)
    assert isinstance(module, M.AlbertForMaskedLM)
    outs.append(np.asarray(module.apply({"params": loaded}, ids[0], attention_mask=ids[1]).logits))
  np.testing.assert_array_equal(*outs)


# ----------------------------------------------------------------------------- changing heads

@pytest.mark.parametrize("source,target", [("pretraining", "sequence_classification"),
                                           ("masked_lm", "multiple_choice"),
                                           ("base", "question_answering"),
                                           ("pretraining", "base"),
                                           ("question_answering", "masked_lm")])
def test_loading_into_another_head_initialises_what_transformers_initialises(
    tmp_path, caplog, source, target):
  cfg = TINY.replace(num_labels=2)
  torch.manual_seed(0)
  _perturb_torch(_hf_class(source)(transformers.AlbertConfig(**cfg.to_hf_dict())), 1) \
      .save_pretrained(tmp_path / "src")
  _, ref_info = _hf_class(target).from_pretrained(tmp_path / "src", output_loading_info=True)
  with caplog.at_level(logging.WARNING, logger="albert_jax.init_from"):
    module, params = albert_jax.from_pretrained(tmp_path / "src", head=target)
  assert isinstance(module, M.HEADS[target][0])
  # What we report as new/unused (Flax paths, re-headed in Flax) is, in HF names, exactly what
  # transformers reports.
  rows = {r.flax: r.hf for r in hf_convert.param_table(cfg, target)}
  source_rows = {r.flax: r.hf for r in hf_convert.param_table(cfg, source)}
  new = set()
  unused = set()
  for record in caplog.records:
    if record.name != "albert_jax.init_from":
      continue
    names = record.args[1]
    if record.msg.startswith("Newly initialised"):
      new |= {rows[n] for n in names}
    elif record.msg.startswith("Checkpoint weights not used"):
      unused |= {source_rows[n] for n in names}
  assert new == set(ref_info["missing_keys"]) - {"predictions.decoder.bias"}  # a tied copy
  norm = lambda keys: {k.removeprefix("albert.") if target == "base" else k for k in keys}
  assert norm(unused) == norm(ref_info["unexpected_keys"]) - {"predictions.decoder.bias"}
  # The backbone is the checkpoint's, bit for bit.
  src_cfg, src_params, _ = hf_convert.load(tmp_path / "src")
  body = lambda p: p.get("albert", p) if "embeddings" not in p else p
  for part in ("embeddings", "encoder"):
    for a, b in zip(jax.tree_util.tree_leaves(body(src_params)[part]),
                    jax.tree_util.tree_leaves(body(params)[part]), strict=True):
      assert np.array_equal(a, b)
  module.apply({"params": params}, _inputs(cfg, target)[0])  # the new head runs


# ----------------------------------------------------------------------------- file formats

def test_pytorch_model_bin_and_sharded_safetensors_load_like_safetensors(tmp_path):
  cfg = GROUPED
  torch.manual_seed(0)
  model = _perturb_torch(transformers.AlbertForPreTraining(
      transformers.AlbertConfig(**cfg.to_hf_dict())), 8)
  model.save_pretrained(tmp_path / "st")
  model.save_pretrained(tmp_path / "bin", safe_serialization=False)
  model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  assert (tmp_path / "bin" / "pytorch_model.bin").is_file()
  assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
  ref = hf_convert.flatten(hf_convert.load(tmp_path / "st")[1])
  for d in ("bin", "sharded"):
    got = hf_convert.flatten(hf_convert.load(tmp_path / d)[1])
    assert got.keys() == ref.keys()
    assert all(np.array_equal(got[k], ref[k]) for k in ref), d


def test_legacy_position_ids_and_tied_decoder_keys_are_ignored(tmp_path):
  cfg = TINY
  params = random_params(cfg, "pretraining", 0)
  hf_convert.save(cfg, params, tmp_path / "hf")
  st = tmp_path / "hf" / "model.safetensors"
  tensors = dict(safetensors.numpy.load_file(st))
  tensors["albert.embeddings.position_ids"] = np.arange(cfg.max_position_embeddings)[None]
  tensors["predictions.decoder.weight"] = tensors["albert.embeddings.word_embeddings.weight"]
  tensors["predictions.decoder.bias"] = tensors["predictions.bias"]
  safetensors.numpy.save_file(tensors, st)
  back = hf_convert.load(tmp_path / "hf")[1]
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params),
                                                   jax.tree_util.tree_leaves(back)))


def test_exported_tokenizer_loads_in_transformers(tmp_path):
  text = tmp_path / "corpus.txt"
  words = "the quick brown fox jumps over lazy dogs while seven wizards quietly hum".split()
  rs = np.random.RandomState(0)
  text.write_text("\n".join(" ".join(rs.choice(words, 9)) for _ in range(300)))
  spm.SentencePieceTrainer.train(
      input=str(text), model_prefix=str(tmp_path / "sp"), vocab_size=40, pad_id=0, unk_id=1,
      bos_id=-1, eos_id=-1, control_symbols="[CLS],[SEP],[MASK]", model_type="unigram")
  cfg = TINY.replace(vocab_size=40)
  params = random_params(cfg, "masked_lm", 0)
  hf_convert.save(cfg, params, tmp_path / "hf", tokenizer=str(tmp_path / "sp.model"))
  tok = transformers.AlbertTokenizer.from_pretrained(tmp_path / "hf")
  ref = transformers.AlbertTokenizer(vocab_file=str(tmp_path / "sp.model"))
  sample = "The quick brown [MASK] jumps over seven lazy dogs."
  assert tok(sample)["input_ids"] == ref(sample)["input_ids"]
  assert tok.mask_token_id == 4 and tok.cls_token_id == 2 and tok.pad_token_id == 0
  fast = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  assert fast(sample)["input_ids"] == ref(sample)["input_ids"]


# ----------------------------------------------------------------------------- bad input

def _hf_dir(tmp_path, head="pretraining", cfg=TINY):
  cfg = _config_for(cfg, head)
  params = random_params(cfg, head, 0)
  d = tmp_path / "hf"
  hf_convert.save(cfg, params, d, head=head)
  return d


def _edit_tensors(d, fn):
  st = d / "model.safetensors"
  tensors = dict(safetensors.numpy.load_file(st))
  fn(tensors)
  safetensors.numpy.save_file(tensors, st, metadata={"format": "pt"})


def _snapshot(d):
  return {p.relative_to(d): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


def _assert_cli_fails_and_leaves_destination(tmp_path, capsys, src, match):
  """The command's exit code and message, in this process (the CLI's own process is tested
  above): an existing destination is left as it was, and no temporary file is left."""
  dst = tmp_path / "existing"
  model_dir.save_model_dir(dst, TINY, random_params(TINY, "base", 0), "base")
  before = _snapshot(dst)
  capsys.readouterr()
  code = hf_convert.main(["hf-to-orbax", str(src), str(dst), "--overwrite"])
  stderr = capsys.readouterr().err
  assert code == 1 and match in stderr, stderr
  assert _snapshot(dst) == before
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_missing_tensor_is_named(tmp_path, capsys):
  d = _hf_dir(tmp_path)
  _edit_tensors(d, lambda t: t.pop("albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.bias"))
  with pytest.raises(KeyError, match=r"albert_layers\.0\.ffn\.bias.*\(24,\)"):
    hf_convert.load(d)
  _assert_cli_fails_and_leaves_destination(tmp_path, capsys, d, "missing tensor")


def test_unexpected_tensor_is_named(tmp_path, capsys):
  d = _hf_dir(tmp_path)
  _edit_tensors(d, lambda t: t.update({"albert.encoder.extra.weight": np.zeros(3, np.float32)}))
  with pytest.raises(ValueError, match=r"albert\.encoder\.extra\.weight"):
    hf_convert.load(d)
  _assert_cli_fails_and_leaves_destination(tmp_path, capsys, d, "unexpected tensors")


def test_misshaped_tensor_names_key_and_both_shapes(tmp_path, capsys):
  d = _hf_dir(tmp_path)
  key = "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight"
  _edit_tensors(d, lambda t: t.update({key: np.zeros((16, 15), np.float32)}))
  with pytest.raises(ValueError, match=rf"{key}.*\(16, 15\).*\(16, 16\)"):
    hf_convert.load(d)
  _assert_cli_fails_and_leaves_destination(tmp_path, capsys, d, "(16, 15)")


def test_config_that_disagrees_with_the_weights(tmp_path):
  d = _hf_dir(tmp_path)
  cfg = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 32}))
  with pytest.raises(ValueError, match=r"ffn\.weight.*\(24, 16\).*\(32, 16\)"):
    hf_convert.load(d)
  (d / "config.json").write_text(json.dumps({**cfg, "num_hidden_groups": 3}))
  with pytest.raises(KeyError, match=r"albert_layer_groups\.1\."):
    hf_convert.load(d)


def test_unknown_model_type(tmp_path, capsys):
  d = _hf_dir(tmp_path)
  cfg = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
  with pytest.raises(ValueError, match="model_type='bert'"):
    hf_convert.load(d)
  _assert_cli_fails_and_leaves_destination(tmp_path, capsys, d, "model_type")


def test_non_finite_values_are_rejected(tmp_path, capsys):
  d = _hf_dir(tmp_path)
  key = "predictions.dense.weight"

  def poison(t):
    t[key] = t[key].copy()
    t[key][3, 2] = np.nan
  _edit_tensors(d, poison)
  with pytest.raises(ValueError, match=rf"{key}.*1 non-finite"):
    hf_convert.load(d)
  _assert_cli_fails_and_leaves_destination(tmp_path, capsys, d, "non-finite")


def test_duplicate_safetensors_keys_are_rejected(tmp_path):
  d = _hf_dir(tmp_path)
  st = d / "model.safetensors"
  raw = st.read_bytes()
  (n,) = struct.unpack("<Q", raw[:8])
  header = raw[8:8 + n].decode()
  first_key = sorted(k for k in json.loads(header) if k != "__metadata__")[0]
  entry = json.dumps({first_key: json.loads(header)[first_key]})[1:-1]
  # Repeat the entry: the safetensors library would silently keep one of them.
  body = header.rstrip()
  dup = body[:-1] + ", " + entry + "}"  # drop the closing brace, append the entry again
  dup = dup.encode().ljust(len(dup) + (-len(dup)) % 8)
  st.write_bytes(struct.pack("<Q", len(dup)) + dup + raw[8 + n:])
  assert first_key in safetensors.numpy.load_file(st)  # the library accepts it
  with pytest.raises(ValueError, match=f"duplicate tensor name '{first_key}'"):
    hf_convert.load(d)


def _malicious_pytorch_bin(tmp_path):
  """(a model directory whose pytorch_model.bin runs `touch MARKER` when unpickled, MARKER)."""
  d = tmp_path / "bin"
  d.mkdir()
  (d / "config.json").write_text(json.dumps(TINY.to_hf_dict()))
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  with open(d / "pytorch_model.bin", "wb") as f:
    pickle.dump({"embeddings.word_embeddings.weight": Evil()}, f)
  return d, marker


def test_pytorch_bin_needs_torch_and_never_unpickles(tmp_path, monkeypatch):
  d, marker = _malicious_pytorch_bin(tmp_path)
  with pytest.raises(ValueError, match="weights_only=True"):
    hf_convert.load(d)
  assert not marker.exists()
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match="needs torch"):
    hf_convert.load(d)


def _safetensors_parts():
  """(header dict, data bytes) of a valid file with two tensors."""
  a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32)
  header = {"__metadata__": {"format": "pt"},
            "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [24, 40]}}
  return header, a.tobytes() + b.tobytes()


def _file(header, data, length=None):
  raw = json.dumps(header).encode() if isinstance(header, dict) else header
  return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _edit(**entries):
  header, data = _safetensors_parts()
  return _file({**header, **entries}, data)


MALFORMED = {
    "header longer than the file": _file(*_safetensors_parts(), length=10_000),
    "header over 100 MB": _file(*_safetensors_parts(), length=100_000_001),
    "truncated data": _file(*_safetensors_parts())[:-3],
    "trailing bytes": _file(*_safetensors_parts()) + b"\0" * 8,
    "overlapping tensors": _edit(b={"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}),
    "shape and offsets disagree": _edit(b={"dtype": "F32", "shape": [5], "data_offsets": [24, 40]}),
    "invalid UTF-8 header": _file(json.dumps(_safetensors_parts()[0]).encode().replace(
        b'"format"', b'"\xff\xfe"'), _safetensors_parts()[1]),
    "nested __metadata__": _edit(__metadata__={"format": {"nested": "pt"}}),
    "unknown dtype": _edit(b={"dtype": "F8_E9", "shape": [4], "data_offsets": [24, 40]}),
    "header not an object": _file(b"[1, 2]", b""),
    "negative dimension": _edit(b={"dtype": "F32", "shape": [-4], "data_offsets": [24, 40]}),
}


def test_a_valid_handmade_safetensors_file_reads(tmp_path):
  (tmp_path / "ok.safetensors").write_bytes(_file(*_safetensors_parts()))
  tensors = hf_convert.read_safetensors(tmp_path / "ok.safetensors")
  assert tensors["a"].shape == (2, 3) and float(tensors["b"].sum()) == 4.0


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_safetensors_are_refused(tmp_path, case):
  """T16: each is refused with an error naming the file, before any array is returned."""
  path = tmp_path / "model.safetensors"
  path.write_bytes(MALFORMED[case])
  with pytest.raises(ValueError, match="model.safetensors"):
    hf_convert.read_safetensors(path)


def test_a_parameter_that_is_not_floating_point_is_refused(tmp_path):
  """T17, dtype: an integer tensor where a weight belongs is a broken checkpoint, not a cast."""
  cfg = TINY
  hf_convert.save(cfg, random_params(cfg, "base", 0), tmp_path / "hf")
  st = tmp_path / "hf" / "model.safetensors"
  tensors = dict(safetensors.numpy.load_file(st))
  key = "embeddings.LayerNorm.weight"
  tensors[key] = tensors[key].astype(np.int32)
  safetensors.numpy.save_file(tensors, st)
  with pytest.raises(ValueError, match=f"{key}.*dtype int32"):
    hf_convert.load(tmp_path / "hf")


def test_torch_older_than_2_6_is_refused_for_pytorch_model_bin(tmp_path, monkeypatch):
  """T15: before 2.6, torch.load(weights_only=True) can run a crafted file's code
  (CVE-2025-32434): the file is not opened at all, and the message says what to do."""
  d, marker = _malicious_pytorch_bin(tmp_path)
  loads = []
  monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
  monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
  with pytest.raises(ImportError, match=r"torch 2\.5\.1\+cpu.*CVE-2025-32434.*torch>=2\.6"):
    hf_convert.load(d)
  assert not loads and not marker.exists()


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/outside.safetensors",
                                   "sub/../../outside.safetensors", "link.safetensors"])
def test_index_shard_names_that_leave_the_directory_are_refused(tmp_path, shard):
  """A hostile model.safetensors.index.json must not make the loader read outside its directory
  (a name with a path in it, or a link out of the directory)."""
  cfg = TINY
  hf_convert.save(cfg, random_params(cfg, "base", 0), tmp_path / "hf")
  outside = tmp_path / "outside.safetensors"
  os.rename(tmp_path / "hf" / "model.safetensors", outside)
  (tmp_path / "hf" / "link.safetensors").symlink_to(outside)
  keys = safetensors.numpy.load_file(outside).keys()
  (tmp_path / "hf" / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {}, "weight_map": {k: shard for k in keys}}))
  with pytest.raises(ValueError, match="refused"):
    hf_convert.load(tmp_path / "hf")


def test_the_vocabulary_is_looked_up_beside_the_model_only(tmp_path):
  """spm_model_in: the model directory, or a training run's workdir; never a parent directory
  that happens to hold some other model's spiece.model."""
  (tmp_path / "spiece.model").write_bytes(b"another model's vocabulary")
  mine = tmp_path / "models" / "mine"
  mine.mkdir(parents=True)
  assert model_dir.spm_model_in(mine) is None
  assert model_dir.spm_model_in(tmp_path / "a" / "checkpoints" / "12") is None
  run = tmp_path / "a"
  (run / "checkpoints" / "12").mkdir(parents=True)
  (run / "spiece.model").write_bytes(b"the run's")
  for path in (run, run / "checkpoints", run / "checkpoints" / "12"):
    assert model_dir.spm_model_in(path) == str(run / "spiece.model")
  (mine / "spiece.model").write_bytes(b"mine")
  assert model_dir.spm_model_in(mine) == str(mine / "spiece.model")


def test_the_package_imports_no_reference_library():
  """torch, transformers and the metric libraries are test-only: importing every module of the
  package (tasks included) in a fresh interpreter loads none of them."""
  code = ("import importlib, pkgutil, sys, albert_jax\n"
          "for m in pkgutil.walk_packages(albert_jax.__path__, 'albert_jax.'):\n"
          "  importlib.import_module(m.name)\n"
          "print(sorted(m for m in ('torch', 'transformers', 'seqeval', 'sklearn') "
          "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_existing_destination_needs_overwrite(tmp_path):
  cfg = TINY
  params = random_params(cfg, "base", 0)
  d = hf_convert.save(cfg, params, tmp_path / "out")
  before = _snapshot(d)
  with pytest.raises(FileExistsError, match="--overwrite"):
    hf_convert.save(cfg, perturb(params, 1), d)
  assert _snapshot(d) == before
  with pytest.raises(KeyError, match="missing parameter"):  # a failed save changes nothing
    hf_convert.save(cfg, {**params, "pooler": {}}, d, head="base", overwrite=True)
  assert _snapshot(d) == before
  hf_convert.save(cfg, perturb(params, 1), d, overwrite=True)
  assert _snapshot(d) != before
  assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ----------------------------------------------------------------------------- outputs that are
# their own sources

RELEASE = Path(__file__).parent / "data" / "tf1_release"


def _listing(root):
  """Every path under `root` (links not followed) with its bytes or link target."""
  out = {}
  for directory, dirs, names in os.walk(root):
    for name in dirs + names:
      p = Path(directory) / name
      out[str(p.relative_to(root))] = (f"-> {os.readlink(p)}" if p.is_symlink()
                                       else p.read_bytes() if p.is_file() else "dir")
  return out


def _source(command, root):
  """What `command` reads, with files a conversion does not read (they must survive too)."""
  if command.startswith("tf-"):
    import shutil
    shutil.copytree(RELEASE, root, ignore=shutil.ignore_patterns("hub", "reference.npz"))
  elif command == "orbax-to-hf":
    model_dir.save_model_dir(root, TINY, random_params(TINY, "pretraining", 0), "pretraining")
  else:
    hf_convert.save(TINY, random_params(TINY, "pretraining", 0), root, head="pretraining")
  (root / "metrics.jsonl").write_text('{"step": 12, "loss": 3.5}\n')
  return root


@pytest.mark.parametrize("command,case", [
    *((c, case) for c in ("orbax-to-hf", "tf-to-hf")
      for case in ("same", "inside", "holds", "link_to_source", "source_is_link")),
    ("hf-to-orbax", "same"), ("tf-to-orbax", "holds")])
def test_an_output_that_overlaps_its_source_is_refused_and_the_source_kept(tmp_path, capsys,
                                                                          command, case):
  """`orbax-to-hf RUN RUN --overwrite` deleted the run, `tf-to-hf REL REL --overwrite` the
  release: an output that is the source, lies in it, holds it, or is it through a link, is
  refused (exit 1, both paths named) with the source byte for byte as it was."""
  src = _source(command, tmp_path / "models" / "src")
  source, out = src, {"same": src, "inside": src / "hf", "holds": tmp_path / "models",
                      "link_to_source": tmp_path / "link", "source_is_link": src}[case]
  if case == "link_to_source":
    out.symlink_to(src)
  if case == "source_is_link":
    source = tmp_path / "link"
    source.symlink_to(src)
  before = _listing(tmp_path)
  assert hf_convert.main([command, str(source), str(out), "--overwrite"]) == 1
  assert _listing(tmp_path) == before  # nothing written, moved or left behind
  err = capsys.readouterr().err
  assert err.startswith("error: ") and str(out) in err and str(source) in err, err
  assert "choose another output directory" in err


def test_the_writers_refuse_an_output_that_overlaps_the_sources_they_are_given(tmp_path):
  """save, save_model and save_model_dir pass `sources` to the write, which refuses the overlap
  before it touches anything (the CLI checks first too, before loading)."""
  src = _source("orbax-to-hf", tmp_path / "models" / "src")
  config, params, head = hf_convert.load_any(src)
  before = _listing(tmp_path)
  for write in (
      lambda: hf_convert.save(config, params, src, head, overwrite=True, sources=[src / "params"]),
      lambda: hf_convert.save_model(config, params, src / "hf", head, sources=[src]),
      lambda: model_dir.save_model_dir(src.parent, config, params, head, overwrite=True,
                                           sources=[src])):
    with pytest.raises(files.OverlappingPaths, match="choose another output directory"):
      write()
  assert _listing(tmp_path) == before
