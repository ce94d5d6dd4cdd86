"""A kernel census of an optimized XLA program: every kernel one step launches, by kind and phase.

`census(hlo_text)` reads the scheduled HLO that `jax.jit(...).lower(...).compile().as_text()`
prints (compiled for a GPU on any host, see `aot.py`), walks it from the entry computation with
loop bodies counted by their trip counts, and prices each kernel: FLOPs (GEMMs and attention from
their shapes, elementwise work one per element and op) and bytes (operands read plus results
written, with in-place updates and sliced reads counted as the bytes they touch). `roofline`
bounds each kernel's time below at stated ceilings. What the text cannot say (the tiles autotuning
picks on a real GPU, launch gaps) is left to a measurement.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
from typing import Iterable

# ----------------------------------------------------------------------------- reading HLO text

ITEM_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
              "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
              "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+) = ")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+) (?:\(.*\) -> .*)?\{\s*$")


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
  """The (element type, dims) of each array in an HLO shape ('bf16[8,128]{1,0}', a tuple)."""
  return [(t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in _ARRAY.findall(shape)]


def shape_bytes(shape: str) -> float:
  return sum(math.prod(dims) * ITEM_BYTES.get(t, 1 if t.startswith("f8") else 4)
             for t, dims in arrays(shape))


def _closing(text: str, start: int) -> int:
  """Index just past the bracket that closes the one at `start` (quotes respected)."""
  pairs = {"(": ")", "{": "}", "[": "]"}
  depth, i, quote = 0, start, False
  while i < len(text):
    c = text[i]
    if quote:
      if c == "\\":
        i += 1
      elif c == '"':
        quote = False
    elif c == '"':
      quote = True
    elif c in pairs:
      depth += 1
    elif c in ")}]":
      depth -= 1
      if depth == 0:
        return i + 1
    i += 1
  raise ValueError(f"unbalanced brackets in HLO line: {text[:200]!r}")


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  shape: str
  opcode: str
  operands: tuple[str, ...]
  attrs: str  # everything after the operand list, as printed
  root: bool = False

  def attr(self, pattern: str) -> str | None:
    m = re.search(pattern, self.attrs)
    return m[1] if m else None

  @property
  def calls(self) -> list[str]:
    """Computations this instruction runs (fusion body, loop body, branches, async wrappee)."""
    names = re.findall(r"\b(?:calls|body|to_apply)=%?([\w.\-]+)", self.attrs)
    for group in re.findall(r"(?:branch_computations|called_computations)=\{([^}]*)\}",
                            self.attrs):
      names += [n.strip().lstrip("%") for n in group.split(",") if n.strip()]
    return names

  @property
  def op_name(self) -> str:
    return self.attr(r'op_name="([^"]*)"') or ""

  @property
  def target(self) -> str:
    return self.attr(r'custom_call_target="([^"]*)"') or ""

  @property
  def fusion_kind(self) -> str:
    """XLA:GPU's fusion backend ('__triton_gemm', '__cublas', ...) or the HLO kind ('kLoop')."""
    return (self.attr(r'"fusion_backend_config":\{"kind":"([^"]+)"')
            or self.attr(r"\bkind=(k\w+)") or "")

  @property
  def trip_count(self) -> int | None:
    n = self.attr(r'"known_trip_count":\{"n":"(\d+)"')
    return int(n) if n else None


def parse_instruction(line: str) -> Instruction | None:
  m = _INSTRUCTION.match(line)
  if not m:
    return None
  i = m.end()
  if line[i] == "(":  # a tuple shape
    end = _closing(line, i)
  else:
    end = line.index(" ", i)
  shape = line[i:end]
  rest = line[end:].lstrip()
  paren = rest.index("(")
  opcode = rest[:paren]
  close = _closing(rest, paren)
  operands = tuple(o.strip().lstrip("%") for o in re.findall(r"%[\w.\-]+", rest[paren:close]))
  return Instruction(m[2], shape, opcode, operands, rest[close:], root=bool(m[1]))


@dataclasses.dataclass
class Computation:
  name: str
  instructions: dict[str, Instruction]  # in program order

  @property
  def root(self) -> Instruction:
    return next((i for i in self.instructions.values() if i.root),
                list(self.instructions.values())[-1])

  def users(self) -> dict[str, list[Instruction]]:
    users = collections.defaultdict(list)
    for inst in self.instructions.values():
      for operand in inst.operands:
        users[operand].append(inst)
    return users


def parse_module(text: str) -> tuple[dict[str, Computation], str]:
  """({name: computation}, the entry's name) of an HLO module's text."""
  computations, entry, current = {}, None, None
  for line in text.splitlines():
    if current is None:
      m = _COMPUTATION.match(line)
      if m and not line.startswith(("HloModule", " ")):
        current = Computation(m[2], {})
        computations[m[2]] = current
        if m[1]:
          entry = m[2]
      continue
    if line.startswith("}"):
      current = None
      continue
    inst = parse_instruction(line)
    if inst is not None:
      current.instructions[inst.name] = inst
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text (pass compiled.as_text())")
  return computations, entry


# ----------------------------------------------------------------------------- kinds and phases

KINDS = {  # key: what the report calls it
    "gemm_library": "GEMM, library (cuBLAS/cuDNN)",
    "gemm_triton": "GEMM, Triton fusion",
    "attention": "attention (cuDNN / Pallas)",
    "elementwise": "elementwise fusion",
    "reduction": "reduction fusion",
    "data_movement": "copy / transpose / slice",
    "collective": "collective",
    "other": "other custom call",
    "loop": "loop iteration",
}
PHASES = ("forward", "recompute", "backward", "update", "unattributed")

# Shapes, not arithmetic: a fusion of only these moves data.
MOVEMENT = {"copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "dynamic-slice",
            "dynamic-update-slice", "concatenate", "pad", "reverse", "gather", "scatter", "tuple",
            "get-tuple-element", "parameter", "constant", "iota", "bitcast-convert", "convert"}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "collective-broadcast", "ragged-all-to-all")
NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
               "add-dependency", "opt-barrier", "domain", "partition-id", "replica-id",
               "while", "conditional", "call", "async-done", "copy-done", "send-done",
               "recv-done", "all-reduce-done", "all-gather-done", "collective-permute-done"}
TRANSCENDENTAL = {"exponential", "exponential-minus-one", "log", "log-plus-one", "tanh", "sqrt",
                  "rsqrt", "cbrt", "power", "sine", "cosine", "tan", "atan2", "logistic", "erf"}


def phase_of(op_name: str) -> str:
  """Where an op sits in a train step, from the op_name jax writes into its metadata: the
  transposed (backward) pass, the forward ops a remat policy recomputes inside it, the forward
  pass (`jvp`), or the update after the gradient (optimizer, finiteness guard, state copies)."""
  if not op_name:
    return "unattributed"
  if "transpose(" in op_name:
    return "recompute" if "rematted_computation" in op_name else "backward"
  if "jvp(" in op_name:
    return "forward"
  return "update"


_WRAPPERS = re.compile(r"^(?:jit|jvp|transpose|vmap|pjit|remat|checkpoint)\(|^(?:while|body|"
                       r"closed_call|checkpoint|rematted_computation|cond|branch_\d+|"
                       r"albert_layer_groups_\d+|albert|encoder)$")


def part_of(op_name: str) -> str:
  """The model part an op belongs to: 'layer/attention/query', 'layer/ffn', 'layer' (the
  activation and residual sums), 'embeddings', 'predictions/dense', or '(step)' (loss, optimizer):
  its module path with jax's transformation wrappers and the scan's plumbing removed, primitive
  dropped."""
  parts = [p for p in op_name.split("/")[:-1]
           if p and not _WRAPPERS.match(p) and "->" not in p]  # nor einsum specs
  layers = [i for i, p in enumerate(parts) if re.fullmatch(r"albert_layers_\d+", p)]
  if layers:
    parts = ["layer"] + parts[layers[-1] + 1:]
  return "/".join(parts) or "(step)"


def _fused_ops(comps: dict[str, Computation], name: str) -> Iterable[Instruction]:
  """Every instruction of a fused computation, nested fusions included."""
  for inst in comps[name].instructions.values():
    if inst.opcode == "fusion":
      for callee in inst.calls:
        yield from _fused_ops(comps, callee)
    else:
      yield inst


def kind_of(inst: Instruction, comps: dict[str, Computation]) -> str:
  op = inst.opcode
  if op == "custom-call":
    t = inst.target.lower()
    if "fmha" in t or "flash" in t or "attention" in t or "splash" in inst.op_name:
      return "attention"
    if "cublas" in t or "gemm" in t or "matmul" in t:
      return "gemm_library"
    return "other"
  if op.removesuffix("-start") in COLLECTIVES:
    return "collective"
  if op == "fusion":
    backend = inst.fusion_kind
    if "cublas" in backend or "cudnn" in backend:
      return "gemm_library"
    ops = [i for callee in inst.calls for i in _fused_ops(comps, callee)]
    if any(i.opcode in ("dot", "convolution", "scaled-dot") for i in ops):
      return "gemm_triton" if "triton" in backend or "gemm" in inst.name else "gemm_library"
    if any(i.opcode == "custom-call" for i in ops):
      return kind_of(next(i for i in ops if i.opcode == "custom-call"), comps)
    arithmetic = [i for i in ops if i.opcode not in MOVEMENT and arrays(i.shape)
                  and any(dims for _, dims in arrays(i.shape))]
    if not arithmetic:
      return "data_movement"
    if any(i.opcode in ("reduce", "reduce-window") for i in ops):
      return "reduction"
    return "elementwise"
  if op in MOVEMENT:
    return "data_movement"
  if op in ("reduce", "reduce-window", "sort"):
    return "reduction"
  return "elementwise"


# ----------------------------------------------------------------------------- cost of one kernel

def _dims_attr(inst: Instruction, name: str) -> tuple[int, ...]:
  text = inst.attr(name + r"=\{([\d,]*)\}") or ""
  return tuple(int(d) for d in text.split(",") if d)


def _shape_of(comp: Computation, name: str) -> str:
  inst = comp.instructions.get(name)
  return inst.shape if inst is not None else ""


def _dot_flops(comp: Computation, dot: Instruction) -> float:
  out = arrays(dot.shape)[0][1]
  lhs = arrays(_shape_of(comp, dot.operands[0]))
  contracting = _dims_attr(dot, "lhs_contracting_dims")
  k = math.prod(lhs[0][1][d] for d in contracting) if lhs else 1
  return 2.0 * math.prod(out) * k


def _library_gemm_flops(comp: Computation, inst: Instruction) -> float:
  out = arrays(inst.shape)[0][1]
  lhs = arrays(_shape_of(comp, inst.operands[0])) if inst.operands else []
  text = inst.attr(r'"lhs_contracting_dimensions":\[([^\]]*)\]') or ""
  contracting = [int(d) for d in re.findall(r"\d+", text)]
  k = math.prod(lhs[0][1][d] for d in contracting) if lhs and contracting else 1
  return 2.0 * math.prod(out) * k


def _attention_flops(comp: Computation, inst: Instruction) -> float:
  """cuDNN flash attention: Q.K^T and P.V forward (4 b h s_q s_k d); the backward pass
  recomputes Q.K^T and adds four products of the same size (10 b h s_q s_k d)."""
  q, k = (arrays(_shape_of(comp, o)) for o in inst.operands[:2])
  if not q or not k:
    return 0.0
  batch_text = inst.attr(r'"bmm1_dot_dimension_numbers":\{[^}]*"lhs_batch_dimensions":\['
                         r'([^\]]*)\]')
  q_dims, k_dims = q[0][1], k[0][1]
  if batch_text is not None and len(q_dims) == 4:
    batch = [int(d) for d in re.findall(r"\d+", batch_text)]
    free = [d for d in range(4) if d not in batch][:2]  # [seq, head_dim] in some order
    b_h = math.prod(q_dims[d] for d in batch)
    s_q, head_dim = q_dims[free[0]], q_dims[free[1]]
    s_k = k_dims[free[0]]
  else:  # [batch, seq, heads, head_dim], jax's layout
    b_h, s_q, head_dim = q_dims[0] * q_dims[2], q_dims[1], q_dims[3]
    s_k = k_dims[1]
  one = 2.0 * b_h * s_q * s_k * head_dim
  return one * (5 if "backward" in inst.target.lower() else 2)


def _elementwise_flops(comps: dict[str, Computation], inst: Instruction) -> float:
  ops = [i for callee in inst.calls for i in _fused_ops(comps, callee)] if inst.calls else [inst]
  flops = 0.0
  for i in ops:
    if i.opcode in MOVEMENT or i.opcode in ("reduce", "reduce-window"):
      if i.opcode in ("reduce", "reduce-window") and i.operands:
        owner = next((c for c in inst.calls if i.name in comps[c].instructions), None)
        source = comps[owner] if owner else None
        flops += sum(math.prod(d) for _, d in arrays(_shape_of(source, i.operands[0]))) \
            if source else 0
      continue
    flops += sum(math.prod(d) for _, d in arrays(i.shape))
  return flops


def _through_bitcasts(comp: Computation, users, name: str) -> list[Instruction]:
  """The users of `name`, looking through bitcasts and reshapes."""
  out = []
  for user in users.get(name, []):
    if user.opcode in ("bitcast", "reshape"):
      out += _through_bitcasts(comp, users, user.name)
    else:
      out.append(user)
  return out


def _fusion_bytes(comps: dict[str, Computation], inst: Instruction) -> float:
  """Bytes a fusion moves: each operand read once, the result written once, except a parameter
  updated in place (a dynamic-update-slice's buffer: only the update is written) and a
  parameter read only through slices (only the slices are read)."""
  comp = comps[inst.calls[0]]
  users = comp.users()
  params = [i for i in comp.instructions.values() if i.opcode == "parameter"]
  total = 0.0
  in_place = set()
  roots = [comp.root] if comp.root.opcode != "tuple" else [
      comp.instructions[o] for o in comp.root.operands if o in comp.instructions]
  written = 0.0
  for root in roots:
    r = root
    while r.opcode in ("bitcast", "reshape", "get-tuple-element") and (
        r.operands[0] in comp.instructions) and not (
        r.opcode == "get-tuple-element" and comp.instructions[r.operands[0]].opcode != "tuple"):
      r = comp.instructions[r.operands[0]]
    if r.opcode == "dynamic-update-slice":
      buffer = r.operands[0]
      while comp.instructions[buffer].opcode in ("bitcast", "reshape"):
        buffer = comp.instructions[buffer].operands[0]
      if comp.instructions[buffer].opcode == "parameter":
        in_place.add(buffer)
      written += shape_bytes(_shape_of(comp, r.operands[1]))
    elif root.opcode == "get-tuple-element" and root.shape.startswith(("s8[", "u8[")):
      continue  # a fused library call's workspace
    else:
      written += _result_bytes(root.shape)
  for p in params:
    if p.name in in_place:
      continue
    consumers = _through_bitcasts(comp, users, p.name)
    if consumers and all(c.opcode in ("dynamic-slice", "slice", "gather") and
                         c.operands[0] in _aliases(comp, p.name) for c in consumers):
      total += sum(shape_bytes(c.shape) for c in consumers)
    else:
      total += shape_bytes(p.shape)
  return total + written


def _aliases(comp: Computation, name: str) -> set[str]:
  """`name` and every bitcast/reshape of it."""
  out, grew = {name}, True
  while grew:
    grew = False
    for inst in comp.instructions.values():
      if inst.opcode in ("bitcast", "reshape") and inst.operands and inst.operands[0] in out \
          and inst.name not in out:
        out.add(inst.name)
        grew = True
  return out


def _result_bytes(shape: str) -> float:
  """Bytes of a result, less a library's scratch workspace (an s8/u8 array ending a tuple)."""
  results = arrays(shape)
  if len(results) > 1 and results[-1][0] in ("s8", "u8"):
    results = results[:-1]
  return sum(math.prod(d) * ITEM_BYTES.get(t, 4) for t, d in results)


def _kernel_cost(comps, comp: Computation, inst: Instruction, kind: str) -> tuple[float, float]:
  """(FLOPs, bytes) of one launch of `inst`, a kernel of `comp`."""
  operand_bytes = sum(shape_bytes(_shape_of(comp, o)) for o in inst.operands)
  if inst.opcode == "fusion" and inst.calls:
    nbytes = _fusion_bytes(comps, inst)
    ops = [i for c in inst.calls for i in _fused_ops(comps, c)]
    calls = [i for i in ops if i.opcode == "custom-call"]
    if calls and kind in ("gemm_library", "attention", "other"):
      # A library call fused with the slices it reads and writes (XLA's dynamic-slice fusion):
      # its FLOPs are the call's, from the shapes inside the fusion.
      inner = calls[0]
      return _kernel_cost(comps, _owner(comps, inst.calls, inner), inner, kind)[0], nbytes
    if kind in ("gemm_triton", "gemm_library"):
      flops = sum(_dot_flops(_owner(comps, inst.calls, i), i) for i in ops
                  if i.opcode in ("dot", "scaled-dot"))
      return flops, nbytes
    return _elementwise_flops(comps, inst), nbytes
  if inst.opcode == "custom-call":
    out = _result_bytes(inst.shape)
    if kind == "attention":
      return _attention_flops(comp, inst), operand_bytes + out
    if kind == "gemm_library":
      return _library_gemm_flops(comp, inst), operand_bytes + out
    return 0.0, operand_bytes + out
  if inst.opcode == "dynamic-update-slice":
    return 0.0, 2 * shape_bytes(_shape_of(comp, inst.operands[1]))
  if inst.opcode in ("dynamic-slice", "slice"):
    return 0.0, 2 * shape_bytes(inst.shape)
  if inst.opcode == "dot":
    return _dot_flops(comp, inst), operand_bytes + shape_bytes(inst.shape)
  return _elementwise_flops(comps, inst), operand_bytes + shape_bytes(inst.shape)


def _owner(comps, callees: list[str], inst: Instruction) -> Computation:
  """The (possibly nested) fused computation that holds `inst`."""
  for name in callees:
    comp = comps[name]
    if comp.instructions.get(inst.name) is inst:
      return comp
    nested = [c for i in comp.instructions.values() if i.opcode == "fusion" for c in i.calls]
    if nested:
      found = _owner(comps, nested, inst)
      if found is not None:
        return found
  return None  # type: ignore[return-value]


def _op_name(comps, inst: Instruction) -> str:
  """The jax op a kernel comes from: its own metadata, else (a fusion XLA made without it, such
  as a library call fused with its slices) the first fused instruction's that has one."""
  if inst.op_name or inst.opcode != "fusion":
    return inst.op_name
  return next((i.op_name for c in inst.calls for i in _fused_ops(comps, c) if i.op_name), "")


# ----------------------------------------------------------------------------- the census

@dataclasses.dataclass(frozen=True)
class Kernel:
  """One kernel of the program and how often a step launches it."""
  name: str  # the HLO instruction (what a profiler's trace calls the kernel's op)
  kind: str  # a key of KINDS
  phase: str  # one of PHASES
  part: str  # model part, from the op's metadata
  launches: int  # per step: loop bodies counted by trip count
  flops: float  # per launch
  bytes: float  # per launch
  op_name: str = ""


def census(hlo_text: str) -> list[Kernel]:
  """Every kernel the program launches per step (see the module doc). Loops whose trip count
  XLA did not record are counted once (`Kernel.launches` says so: a `loop` entry of 1)."""
  comps, entry = parse_module(hlo_text)
  out: list[Kernel] = []

  def walk(name: str, times: int):
    comp = comps[name]
    for inst in comp.instructions.values():
      op = inst.opcode
      if op == "while":
        trips = inst.trip_count or 1
        body = inst.attr(r"\bbody=%?([\w.\-]+)")
        condition = inst.attr(r"\bcondition=%?([\w.\-]+)")
        out.append(Kernel(inst.name, "loop", phase_of(inst.op_name), part_of(inst.op_name),
                          times * trips, 0.0, 0.0, inst.op_name))
        walk(body, times * trips)
        walk(condition, times * (trips + 1))
        continue
      if op in ("call", "conditional", "async-start") or (
          op.endswith("-start") and op.removesuffix("-start") not in COLLECTIVES
          and inst.calls):
        for callee in inst.calls:
          walk(callee, times)
        continue
      if op in NOT_KERNELS or op.endswith("-done"):
        continue
      kind = kind_of(inst, comps)
      flops, nbytes = _kernel_cost(comps, comp, inst, kind)
      op_name = _op_name(comps, inst)
      out.append(Kernel(inst.name, kind, phase_of(op_name), part_of(op_name), times, flops,
                        nbytes, op_name))

  walk(entry, 1)
  return out


# ----------------------------------------------------------------------------- the roofline

@dataclasses.dataclass(frozen=True)
class Ceilings:
  """The rates a kernel's lower bound is priced at: dense matmul FLOP/s (bf16), attention
  FLOP/s (fused kernels: their matmuls), memory bytes/s, and where the figures come from."""
  matmul_flops: float
  attention_flops: float
  memory_bytes: float
  source: str

  def seconds(self, kernel: Kernel) -> float:
    """One launch's lower bound: its FLOPs at the compute rate or its bytes at the memory rate,
    whichever takes longer."""
    rate = {"gemm_library": self.matmul_flops, "gemm_triton": self.matmul_flops,
            "attention": self.attention_flops}.get(kernel.kind)
    compute = kernel.flops / rate if rate else 0.0
    return max(compute, kernel.bytes / self.memory_bytes)


def summarize(kernels: list[Kernel], ceilings: Ceilings | None = None) -> dict:
  """Per kind and per phase: launches, FLOPs and bytes per step (and roofline seconds); the step's
  totals."""
  def table(key):
    rows = collections.OrderedDict()
    for k in kernels:
      row = rows.setdefault(key(k), {"count": 0, "flops": 0.0, "bytes": 0.0, "seconds": 0.0})
      row["count"] += k.launches
      row["flops"] += k.flops * k.launches
      row["bytes"] += k.bytes * k.launches
      if ceilings is not None:
        row["seconds"] += ceilings.seconds(k) * k.launches
    if ceilings is None:
      for row in rows.values():
        del row["seconds"]
    return dict(rows)

  kinds = table(lambda k: k.kind)
  kinds = {k: kinds[k] for k in KINDS if k in kinds}
  phases = table(lambda k: k.phase)
  phases = {p: phases[p] for p in PHASES if p in phases}
  launched = [k for k in kernels if k.kind != "loop"]
  out = {
      "kernels": kinds,
      "phases": phases,
      "parts": table(lambda k: k.part),
      "launches": sum(k.launches for k in launched),
      "flops": sum(k.flops * k.launches for k in launched),
      "bytes": sum(k.bytes * k.launches for k in launched),
      "non_matmul_bytes": sum(k.bytes * k.launches for k in launched
                              if k.kind not in ("gemm_library", "gemm_triton", "attention")),
      "attention_forward_calls": sum(
          k.launches for k in launched if k.kind == "attention" and k.phase != "backward"
          and "backward" not in k.op_name.lower() and "bwd" not in k.op_name.lower()),
  }
  if ceilings is not None:
    out["roofline_seconds"] = sum(ceilings.seconds(k) * k.launches for k in launched)
    out["ceilings"] = dataclasses.asdict(ceilings)
  return out


def format_summary(summary: dict, top_parts: int = 12) -> str:
  """The census as the aot report prints it."""
  has_time = "roofline_seconds" in summary
  head = f"{'kernels per step':<34}{'launches':>9}{'GFLOP':>10}{'GB':>9}"
  head += f"{'roofline ms':>13}" if has_time else ""
  lines = [head]

  def row(label, r):
    line = f"{label:<34}{r['count']:>9,}{r['flops'] / 1e9:>10.1f}{r['bytes'] / 1e9:>9.2f}"
    return line + (f"{1e3 * r['seconds']:>13.2f}" if has_time else "")

  for kind, r in summary["kernels"].items():
    label = KINDS[kind]
    if kind == "loop":
      lines.append(f"{label:<34}{r['count']:>9,}")
      continue
    lines.append(row(label, r))
  lines.append("by phase:")
  lines += [row("  " + phase, r) for phase, r in summary["phases"].items()]
  parts = sorted(summary["parts"].items(), key=lambda kv: -kv[1]["bytes"])[:top_parts]
  lines.append(f"by model part (the {len(parts)} moving most bytes):")
  lines += [row("  " + part[:32], r) for part, r in parts]
  total = (f"step: {summary['launches']:,} launches, {summary['flops'] / 1e12:.2f} TFLOP, "
           f"{summary['bytes'] / 1e9:.1f} GB ({summary['non_matmul_bytes'] / 1e9:.1f} GB outside "
           f"GEMMs and attention), {summary['attention_forward_calls']} attention forward calls")
  lines.append(total)
  if has_time:
    c = summary["ceilings"]
    lines.append(f"roofline (a lower bound, not a measurement): "
                 f"{1e3 * summary['roofline_seconds']:.1f} ms at {c['matmul_flops'] / 1e12:.0f} "
                 f"TFLOP/s matmul, {c['attention_flops'] / 1e12:.0f} TFLOP/s attention, "
                 f"{c['memory_bytes'] / 1e12:.2f} TB/s memory ({c['source']})")
  return "\n".join(lines)


def to_json(kernels: list[Kernel]) -> str:
  return json.dumps([dataclasses.asdict(k) for k in kernels])
