"""TF1 releases read without TensorFlow, against what TensorFlow wrote and transformers' own TF1
loader computed (tests/data/tf1_*, written once by experiments/make_tf1_fixture.py)."""

import json
import logging
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers

import albert_jax
from albert_jax import hf_convert
from albert_jax.checkpoints import model_dir, tf1
from albert_jax.tasks import common
from albert_jax import model as M
from albert_jax.checkpoints import tensorbundle as T
from albert_jax.checkpoints.tensorbundle import Checkpoint, masked_crc32c

DATA = Path(__file__).parent / "data"
RELEASE = DATA / "tf1_release"
HUB = RELEASE / "hub"
DTYPES = DATA / "tf1_dtypes"
REF = dict(np.load(RELEASE / "reference.npz"))
INPUTS = {k: REF[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
FFN_KERNEL = "bert/encoder/transformer/group_1/inner_group_0/ffn_1/intermediate/dense/kernel"


def _outputs(module, params):
  return jax.jit(module.apply, static_argnames="output_hidden_states")(
      {"params": params}, INPUTS["input_ids"], attention_mask=INPUTS["attention_mask"],
      token_type_ids=INPUTS["token_type_ids"], output_hidden_states=True)


def _assert_matches_reference(module, params):
  out = _outputs(module, params)
  for field in ("prediction_logits", "sop_logits"):
    np.testing.assert_allclose(np.asarray(getattr(out, field)), REF[field], atol=1e-5, rtol=0,
                               err_msg=field)
  assert len(out.hidden_states) == 5
  for i, h in enumerate(out.hidden_states):
    np.testing.assert_allclose(np.asarray(h), REF[f"hidden_states_{i}"], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- the format

def test_every_dtype_reads_as_tensorflow_wrote_it():
  ckpt = Checkpoint(DTYPES / "model.ckpt")
  values = np.load(DTYPES / "values.npz")
  plain = {k.replace(".", "/") for k in values.files}
  assert set(ckpt.entries) == plain | {"string", "sliced"}
  for name in plain:
    got, want = ckpt.read(name), values[name.replace("/", ".")]
    assert got.shape == want.shape, name
    if name != "bfloat16":
      assert got.dtype == want.dtype, name
    np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=name)
  assert ckpt.read("bfloat16").dtype.name == "bfloat16"


def test_strings_and_partitioned_variables_are_refused_by_name():
  ckpt = Checkpoint(DTYPES / "model.ckpt")
  with pytest.raises(ValueError, match="'string' has unsupported dtype DT_STRING"):
    ckpt.read("string")
  with pytest.raises(ValueError, match="'sliced' was saved partitioned"):
    ckpt.read("sliced")
  with pytest.raises(KeyError, match="no variable 'nope'"):
    ckpt.read("nope")


def test_crc_mask_is_tensorflows():
  # crc32c("123456789") = 0xE3069283 (the standard check value), masked as TF's crc32c::Mask.
  crc = 0xE3069283
  assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


# ----------------------------------------------------------------------------- releases vs transformers

@pytest.fixture(scope="module")
def release():
  return albert_jax.from_pretrained(RELEASE)


def test_release_matches_transformers_tf1_loader(release):
  module, params = release
  assert isinstance(module, M.AlbertForPreTraining)
  assert module.config.hidden_act == "gelu_new"  # the original's "gelu" is the tanh one
  assert (module.config.num_hidden_groups, module.config.inner_group_num) == (2, 2)
  _assert_matches_reference(module, params)
  base, base_params = albert_jax.from_pretrained(RELEASE, head="base")
  out = _outputs(base, base_params)
  for field in ("last_hidden_state", "pooler_output"):
    np.testing.assert_allclose(np.asarray(getattr(out, field)), REF[field], atol=1e-5, rtol=0)


def test_tf_hub_module_gives_the_same_model(release):
  with pytest.raises(FileNotFoundError, match="no albert_config.json .*TF-Hub.*preset"):
    albert_jax.from_pretrained(HUB)
  for config in (RELEASE / "albert_config.json", release[0].config):
    module, params = albert_jax.from_pretrained(HUB, config=config)
    assert module.config == release[0].config
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(release[1]),
                    strict=True):
      assert np.array_equal(a, b)
  # The module's variables file as a prefix, and the reference numbers once more.
  _assert_matches_reference(*albert_jax.from_pretrained(HUB / "variables" / "variables",
                                                        config=release[0].config))


def test_tf_to_hf_loads_in_transformers(tmp_path):
  run = subprocess.run([sys.executable, "-m", "albert_jax.hf_convert", "tf-to-hf", RELEASE,
                        tmp_path / "hf"], capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  assert "pretraining head" in run.stdout
  model, info = transformers.AlbertForPreTraining.from_pretrained(
      tmp_path / "hf", local_files_only=True, output_loading_info=True)
  assert {k: v for k, v in info.items() if v} == {}
  assert model.config.hidden_act == "gelu_new"
  with torch.no_grad():
    out = model.eval()(**{k: torch.from_numpy(v).long() for k, v in INPUTS.items()})
  for field in ("prediction_logits", "sop_logits"):
    np.testing.assert_allclose(getattr(out, field).numpy(), REF[field], atol=1e-5, rtol=0)
  assert (tmp_path / "hf" / "spiece.model").read_bytes() == \
      (RELEASE / "30k-clean.model").read_bytes()
  tok = transformers.AlbertTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
  assert (tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (2, 3, 4)


def test_tf_to_orbax_and_init_from_read_the_same_params(tmp_path, release):
  assert hf_convert.main(["tf-to-orbax", str(HUB), str(tmp_path / "orbax"), "--config",
                          str(RELEASE / "albert_config.json")]) == 0
  config, params, head = model_dir.load_model_dir(tmp_path / "orbax")
  assert (config, head) == (release[0].config, "pretraining")
  assert (tmp_path / "orbax" / "spiece.model").read_bytes() == \
      (HUB / "assets" / "30k-clean.model").read_bytes()
  loaded = hf_convert.load_any(RELEASE, head="pretraining")  # what config.init_from does
  for a, b, c in zip(*(jax.tree_util.tree_leaves(p) for p in (params, release[1], loaded[1])),
                     strict=True):
    assert np.array_equal(a, b) and np.array_equal(a, c)
  # Fine-tuning from a release finds its vocabulary.
  tok = common.find_vocabulary(ml_collections.ConfigDict({"spm_model": "",
                                                          "init_from": str(RELEASE)}))
  assert tok.vocab_size == 100


def test_other_head_keeps_the_backbone(caplog):
  module, params = albert_jax.from_pretrained(RELEASE, head="sequence_classification")
  assert isinstance(module, M.AlbertForSequenceClassification)
  _, ref_params = albert_jax.from_pretrained(RELEASE)
  for a, b in zip(jax.tree_util.tree_leaves(params["albert"]),
                  jax.tree_util.tree_leaves(ref_params["albert"]), strict=True):
    assert np.array_equal(a, b)


def test_original_config_keys():
  d = json.loads((RELEASE / "albert_config.json").read_text())
  assert tf1.config_from_original(d).hidden_act == "gelu_new"
  assert tf1.config_from_original({**d, "hidden_act": "relu"}).hidden_act == "relu"
  for key, value in (("net_structure_type", 1), ("gap_size", 3), ("num_memory_blocks", 2),
                     ("down_scale_factor", 2), ("layers_to_keep", [0, 1])):
    with pytest.raises(ValueError, match=re.escape(f"{key}={value!r} is not supported")):
      tf1.config_from_original({**d, key: value})
  with pytest.raises(ValueError, match="unknown key 'use_fancy_thing'"):
    tf1.config_from_original({**d, "use_fancy_thing": True})
  with pytest.raises(ValueError, match="hidden_act='swish'"):
    tf1.config_from_original({**d, "hidden_act": "swish"})


# ----------------------------------------------------------------------------- bad input

def _copy(tmp_path, src=RELEASE):
  d = tmp_path / "release"
  shutil.copytree(src, d, ignore=shutil.ignore_patterns("hub", "reference.npz"))
  return d


def _varint(n: int) -> bytes:
  n &= 2**64 - 1  # a negative value as protobuf writes an int64: ten bytes
  return bytes([(n >> (7 * i) & 0x7F) | (0x80 if n >> (7 * (i + 1)) else 0)
                for i in range(max(1, (n.bit_length() + 6) // 7))])


def _entry(dtype: int, shape, offset: int, size: int, shard: int = 0) -> bytes:
  """A BundleEntryProto (tensor_bundle.proto) as TF serialises it."""
  dims = b"".join(b"\x12" + _varint(len(d)) + d for d in (b"\x08" + _varint(n) for n in shape))
  return (b"\x08" + _varint(dtype) + b"\x12" + _varint(len(dims)) + dims + b"\x18"
          + _varint(shard) + b"\x20" + _varint(offset) + b"\x28" + _varint(size))


def _write_index(prefix: Path, drop: str | None = None, replace: dict | None = None):
  """Rewrites PREFIX.index without `drop` and with `replace`'s entries (name -> BundleEntryProto
  bytes): one block, keys uncompressed (valid LevelDB too)."""
  ckpt_raw = Path(f"{prefix}.index").read_bytes()
  footer = ckpt_raw[-48:]
  pos = T._varint(footer, T._varint(footer, 0)[1])[1]
  end = T._varint(footer, T._varint(footer, pos)[1])[1]
  entries = [kv for _, h in T._block_entries(T._block(ckpt_raw, footer[pos:end], prefix))
             for kv in T._block_entries(T._block(ckpt_raw, h, prefix))
             if drop is None or kv[0] != drop.encode()]
  entries = [(k, (replace or {}).get(k.decode(), v)) for k, v in entries]
  varint = _varint
  block = lambda body: body + struct.pack("<II", 0, 1)  # restart at 0, one restart
  trailer = lambda b: b + b"\0" + struct.pack("<I", masked_crc32c(b + b"\0"))
  data = block(b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in entries))
  handle = varint(0) + varint(len(data))
  out = trailer(data)
  meta = block(b"")
  meta_handle = varint(len(out)) + varint(len(meta))
  out += trailer(meta)
  index = block(varint(0) + varint(len(entries[-1][0])) + varint(len(handle)) + entries[-1][0]
                + handle)
  index_handle = varint(len(out)) + varint(len(index))
  out += trailer(index)
  out += (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
  Path(f"{prefix}.index").write_bytes(out)


def _fails(tmp_path, src, match, *extra):
  """The CLI fails saying `match`, leaving neither a destination nor a temporary directory, and
  an existing destination untouched."""
  for command in ("tf-to-hf", "tf-to-orbax"):
    dst = tmp_path / f"out-{command}"
    assert hf_convert.main([command, str(src), str(dst), *extra]) == 1
    assert not dst.exists()
  dst.mkdir()
  (dst / "keep").write_text("x")
  assert hf_convert.main(["tf-to-orbax", str(src), str(dst), "--overwrite", *extra]) == 1
  assert [p.name for p in dst.iterdir()] == ["keep"]
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
  with pytest.raises((ValueError, KeyError, FileNotFoundError), match=match):
    albert_jax.from_pretrained(src)


def test_truncated_data_file(tmp_path, capsys):
  d = _copy(tmp_path)
  data = d / "model.ckpt-best.data-00000-of-00001"
  data.write_bytes(data.read_bytes()[:-100])
  match = r"data-00000-of-00001: truncated data file: variable '.*' needs bytes"
  _fails(tmp_path, d, match)
  assert "truncated data file" in capsys.readouterr().err


def test_flipped_byte_fails_the_crc(tmp_path, capsys):
  d = _copy(tmp_path)
  entry = Checkpoint(d / "model.ckpt-best").entries[FFN_KERNEL]
  data = d / "model.ckpt-best.data-00000-of-00001"
  raw = bytearray(data.read_bytes())
  raw[entry.offset + 17] ^= 0x01
  data.write_bytes(bytes(raw))
  _fails(tmp_path, d, f"bad crc32c for variable '{FFN_KERNEL}'")
  assert f"bad crc32c for variable '{FFN_KERNEL}'" in capsys.readouterr().err


def test_missing_variable_is_named(tmp_path, capsys):
  d = _copy(tmp_path)
  _write_index(d / "model.ckpt-best", "global_step")  # the rewritten index itself reads fine
  assert albert_jax.from_pretrained(d)[0].config.hidden_size == 12
  _write_index(d / "model.ckpt-best", FFN_KERNEL)
  _fails(tmp_path, d, rf"missing variable '{FFN_KERNEL}' \(shape \[12, 24\]\)")
  assert "missing variable" in capsys.readouterr().err


def test_config_that_disagrees_with_the_variables(tmp_path):
  d = _copy(tmp_path)
  cfg = json.loads((d / "albert_config.json").read_text())
  (d / "albert_config.json").write_text(json.dumps({**cfg, "intermediate_size": 32}))
  first = FFN_KERNEL.replace("group_1", "group_0")
  _fails(tmp_path, d, rf"'{first}' has shape \[12, 24\] but the config expects \[12, 32\]")
  (d / "albert_config.json").write_text(json.dumps({**cfg, "num_hidden_groups": 1}))
  with pytest.raises(ValueError, match="num_hidden_groups=1 in .*albert_config.json, but the "
                     r"checkpoint's layers are group_0 ... group_1: set num_hidden_groups=2"):
    albert_jax.from_pretrained(d)


@pytest.mark.parametrize("changes,message", [
    ({"num_hidden_groups": 2000, "num_hidden_layers": 2000}, "set num_hidden_groups=2 in"),
    ({"inner_group_num": 3}, "set inner_group_num=2 in"),
    ({"vocab_size": 10**9}, r"'bert/embeddings/word_embeddings' has shape \[100, 8\] but the "
     r"config expects \[1000000000, 8\]: set vocab_size=100 in"),
    ({"embedding_size": 16}, r"shape \[100, 8\] but the config expects \[100, 16\]: set "
     "embedding_size=8 in")], ids=["2000 groups", "inner groups", "vocab 10**9", "embedding"])
def test_a_config_far_from_the_checkpoint_is_refused_before_tracing(tmp_path, capsys, changes,
                                                                    message):
  """Issue 21, 9 and 10: 2000 layer groups traced the model for minutes, vocab_size 10**9
  allocated 30 GiB, before the mismatch was reported; now the index's shapes are compared with
  the config first, naming the field, the file and the value to set."""
  d = _copy(tmp_path)
  cfg = json.loads((d / "albert_config.json").read_text())
  (d / "albert_config.json").write_text(json.dumps({**cfg, **changes}))
  start = time.monotonic()
  assert hf_convert.main(["tf-to-hf", str(d), str(tmp_path / "out")]) == 1
  assert time.monotonic() - start < 10
  err = capsys.readouterr().err
  assert re.search(message, err) and "albert_config.json" in err, err


def test_expected_shapes_of_a_huge_vocabulary_allocate_nothing():
  """The shapes a config implies, traced and transformed without the arrays (before: np.empty
  of vocab_size x embedding_size floats)."""
  cfg = M.AlbertConfig(**{**M.AlbertConfig().__dict__, "vocab_size": 10**9})
  shapes = hf_convert.expected_hf_shapes(cfg, "pretraining")
  assert shapes["albert.embeddings.word_embeddings.weight"] == (10**9, cfg.embedding_size)
  assert shapes["albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query.weight"] \
      == (cfg.hidden_size, cfg.hidden_size)


def test_bad_config_key_is_named(tmp_path, capsys):
  d = _copy(tmp_path)
  cfg = json.loads((d / "albert_config.json").read_text())
  (d / "albert_config.json").write_text(json.dumps({**cfg, "net_structure_type": 1}))
  _fails(tmp_path, d, "net_structure_type=1 is not supported")
  assert "albert_config.json: net_structure_type=1" in capsys.readouterr().err


F32 = 1  # DT_FLOAT
POOLER_BIAS = "bert/pooler/dense/bias"  # [12] float32


@pytest.mark.parametrize("entry,message", [
    (_entry(F32, [12], -8, 48), "has offset -8 and 48 bytes .*the index is corrupt"),
    (_entry(F32, [12], 10**9, 48), r"truncated data file: .*needs bytes \[1000000000, "),
    (_entry(F32, [2**60], 0, 2**62), r"needs bytes \[0, 4611686018427387904\) but the file has"),
    (_entry(F32, [2**32, 2**32, 16], 0, 0), r"shape \[4294967296, 4294967296, 16\] float32 needs "
     "1180591620717411303424"),
    (_entry(F32, [12], 0, 48, shard=3), "is in data file 3, but the checkpoint has 1")],
    ids=["negative offset", "offset past the end", "size beyond RAM", "count overflow",
         "no such data file"])
def test_index_entries_beyond_the_data_file_are_refused_naming_the_variable(tmp_path, capsys,
                                                                             entry, message):
  """Issue 21, 10: an offset that is negative or past the file (an OSError from seek), a size
  beyond RAM (a MemoryError before the file's length was looked at), an element count that
  overflows int64 (a reshape error): each refused, naming the file and the variable."""
  d = _copy(tmp_path)
  _write_index(d / "model.ckpt-best", replace={POOLER_BIAS: entry})
  _fails(tmp_path, d, message)
  err = capsys.readouterr().err
  assert POOLER_BIAS in err and "model.ckpt-best" in err, err


def test_checkpoint_file_paths_stay_in_the_release_directory(tmp_path, caplog):
  """Issue 21, 4: a `checkpoint` file naming ../other/model.ckpt-best, or that directory's
  absolute path, made the reader take the other directory's checkpoint instead of the one beside
  the file. Only the name's last part is read, beside it, and a log line says which."""
  d = _copy(tmp_path)
  other = tmp_path / "other"
  other.mkdir()
  for suffix in (".index", ".data-00000-of-00001"):
    shutil.copyfile(d / f"model.ckpt-best{suffix}", other / f"model.ckpt-best{suffix}")
  data = other / "model.ckpt-best.data-00000-of-00001"
  data.write_bytes(data.read_bytes()[:-100])  # reading it fails: it must not be read
  for named in ("../other/model.ckpt-best", str(other / "model.ckpt-best")):
    (d / "checkpoint").write_text(f'model_checkpoint_path: "{named}"\n')
    assert tf1.find_release(d).prefix == d / "model.ckpt-best"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="albert_jax"):
      assert albert_jax.from_pretrained(d)[0].config.num_hidden_layers == 4
    assert f"Reading the TF1 checkpoint {d / 'model.ckpt-best'} " in caplog.text
    assert f"names {named!r}: reading {d / 'model.ckpt-best'}, beside it" in caplog.text
  (d / "checkpoint").write_text('model_checkpoint_path: "../.."\n')
  with pytest.raises(ValueError, match=r"model_checkpoint_path '\.\./\.\.' names no checkpoint"):
    albert_jax.from_pretrained(d)


def test_a_garbage_vocabulary_is_refused_naming_it(tmp_path, capsys):
  d = _copy(tmp_path)
  (d / "30k-clean.model").write_bytes(b"\x00garbage")
  assert hf_convert.main(["tf-to-hf", str(d), str(tmp_path / "out")]) == 1
  assert f"error: {d / '30k-clean.model'} is not a SentencePiece model" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_bad_magic_and_missing_data_file(tmp_path):
  d = _copy(tmp_path)
  index = d / "model.ckpt-best.index"
  raw = index.read_bytes()
  index.write_bytes(raw[:-8] + b"\0" * 8)
  _fails(tmp_path, d, "model.ckpt-best.index: bad magic number")
  index.write_bytes(raw)
  (d / "model.ckpt-best.data-00000-of-00001").unlink()
  with pytest.raises(FileNotFoundError, match="data-00000-of-00001 not found"):
    albert_jax.from_pretrained(d)


def test_checkpoint_file_and_several_checkpoints(tmp_path):
  d = _copy(tmp_path)
  for suffix in (".index", ".data-00000-of-00001"):
    shutil.copyfile(d / f"model.ckpt-best{suffix}", d / f"model.ckpt-7{suffix}")
    (d / f"model.ckpt-best{suffix}").rename(d / f"model.ckpt-9{suffix}")
  with pytest.raises(ValueError, match=r"several checkpoints .*model.ckpt-7.index"):
    albert_jax.from_pretrained(d)
  # A `checkpoint` file names one, with the absolute path of the machine that trained.
  (d / "checkpoint").write_text('model_checkpoint_path: "/gcs/run/model.ckpt-9"\n'
                                'all_model_checkpoint_paths: "/gcs/run/model.ckpt-7"\n')
  assert tf1.find_release(d).prefix == d / "model.ckpt-9"
  assert albert_jax.from_pretrained(d)[0].config.num_hidden_layers == 4
  (d / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-3"\n')
  with pytest.raises(FileNotFoundError, match="names checkpoint 'model.ckpt-3'"):
    albert_jax.from_pretrained(d)
