"""Fitted cost-model parameters: how close real kernels and collectives come to the datasheet.

The cost model (``cost.py``) turns each operator's work (FLOPs, bytes moved, kernels launched, bytes on a
link) into seconds. The parameters that do so live here, per GPU kind, fitted by ``scripts/calibrate.py``
to measured data (``calibration/data/``) and written to ``optimizer/inputs/catalog/calibration.yaml``. Every
plan records the calibration ``id`` and which entry its GPU used, so an estimate can be reproduced.

Forms (all times in seconds, efficiencies as shares of the datasheet figure):
- GEMM of ``m x k`` by ``k x n``: ``launch + max(flops / (peak x compute_efficiency x sustained_compute),
  bytes / (hbm x memory_efficiency))``; FP8 adds the activation quantisation pass
  (``quant_s_per_element x m x k``). The fixed launch term makes the achieved efficiency a function of
  problem size: small GEMMs reach a small share of peak, as the measured tables show.
- Attention: prefill as compute (FLOPs of the causal or windowed score and value products), decode as
  memory (KV-cache bytes read), each with its own launch term and efficiency.
- Collectives: NCCL chooses among protocols (LL, LL128, Simple) the fastest for the message; each has a
  latency and a bandwidth (NCCL's tuning model, ``src/graph/tuning.cc``: base latency + steps x hop
  latency + bytes / bandwidth). We fit two protocols per link kind: ``base_us + steps x hop_us +
  bus_bytes / (link bandwidth x bandwidth_efficiency)`` and take the smaller. ``steps`` is ``2(n-1)`` for
  a ring all-reduce, ``n-1`` for all-gather / reduce-scatter, 1 for all-to-all and point-to-point
  (Thakur, Rabenseifner, Gropp, IJHPCA 2005, for the bus bytes). Where GPUs share a fabric (PCIe through
  the host, no NVLink) the bandwidth each gets falls with the group: ``/ (n/2)^contention_exponent``
  (fitted; about 0 behind an NVSwitch, about 2 on the measured 8 x L40S server).
- Step parameters, per software stack (engine and era) and GPU, fitted to measured whole steps:
  ``sustained_compute`` (the share of the micro-benchmark GEMM rate a full model keeps: clocks under
  sustained load, kernel choice), ``layer_overhead_us`` per layer and ``step_overhead_us`` per forward step
  (launches and framework work not in the operator list), ``sustained_memory`` (the micro-benchmark HBM
  rate a full model's back-to-back weight streaming reaches, the memory-bound twin of ``sustained_compute``),
  ``sequence_overhead_us`` per sequence in a step (the host's per-request work: scheduling, block tables,
  sampling; large in 2023 Python schedulers, which vLLM's v0.6 release measured as a GPU idle for half
  of each step, small in C++ runtimes), and ``collective_skew_us`` per collective call
  and per doubling of its group, ``x log2(n)`` (a collective waits for its slowest rank; the expected
  maximum of n ranks' delays grows like log n for exponential-tailed delays, the order-statistics
  argument that keeps a fit on 2-8 GPUs from exploding at 64; micro-benchmarks start all ranks together
  and do not see it). These differ by
  stack far more than by GPU: a 2023 stack and a 2025 TensorRT-LLM build differ by ~1.5x per decode step
  on the same H100 (``scripts/validate_cost_model.py``). A scenario picks its stack with
  ``engine.calibration_stack``, or gets ``engine_stacks[engine.name]``; or names a serving calibration file
(``engine.calibration_file``, written by ``optimize calibrate``: ``with_step_fit``, ``file_calibration``)
whose refitted step parameters become its engine's stack on its GPU, under the file's id.

Kernel tables per engine (issue 13 item 6): the GEMM, attention, fused-MoE and all-reduce kernels an engine
runs are its own (vLLM: torch linear / CUTLASS FP8, FlashAttention, Triton fused MoE, its custom all-reduce;
SGLang: sgl-kernel, FlashAttention 3 / Triton, its fused MoE and custom all-reduce; TensorRT-LLM: its own
kernels and AUTO all-reduce), and aiconfigurator-core measures each separately. A GPU entry's ``kernels``
holds, per engine profile, the fits to that engine's tables (``EngineKernels``); ``Calibration.for_gpu``
with ``engine`` puts them in place of the shared fits (aiconfigurator's vLLM GEMM and attention tables and
NCCL, which every engine falls back to where it has no tables of its own), and ``describe`` says which
engine's tables a plan used, or which stand in.
- Fused MoE (``moe``): the routed experts' grouped GEMMs as one GEMM-shaped work (``cost.ffn_works``,
  ``Work.grouped``) with their own launch term and efficiencies, fitted to the engine's fused-MoE op
  (routing, both grouped GEMMs, activation, combine). Without a fit, the plain GEMM fit.
- Custom all-reduce (``custom_allreduce``): an engine's own intra-node all-reduce kernel, ``base_us +
  2(n-1) x hop_us + bus_bytes / (B x efficiency)`` like an NCCL protocol, used for messages up to
  ``max_bytes`` (vLLM and SGLang: 8 MiB, ``CustomAllreduce(max_size=8192 * 1024)`` in vLLM's
  ``distributed/device_communicators/custom_all_reduce.py``; 0: no cap, TensorRT-LLM's AUTO strategy picks per
  size) on 2, 4, 6 or 8 GPUs (``_SUPPORTED_WORLD_SIZES``; only 2 over PCIe without NVLink); the engine takes
  it where it beats NCCL.

A GPU with no entry takes ``default`` (the geometric mean of the fitted GPUs, with the scenario's own
link latency), and the plan says so ("uncalibrated").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from functools import cache
from typing import Any

from optimizer.inputs.catalog import calibration_data
from optimizer.errors import OptimizerError


@dataclass(frozen=True)
class GemmFit:
    """One GEMM dtype on one GPU."""

    launch_us: float
    compute_efficiency: float
    memory_efficiency: float
    quant_ns_per_element: float = 0.0  # FP8: the per-token activation quantisation pass, per m x k element


@dataclass(frozen=True)
class AttentionFit:
    """Fused attention kernels (FlashAttention 2/3 in vLLM): prefill compute, decode memory."""

    prefill_launch_us: float
    prefill_compute_efficiency: float
    decode_launch_us: float
    decode_memory_efficiency: float
    # The prefill kernel's memory-bound term (its Q, K, V and output traffic), fitted on its own since the
    # decode rows measure long KV streams that reach more of HBM (aiconfigurator's generation rows at
    # batch >= 64 and 1k+ tokens: ~3 TB/s on H100); None (older files): ``decode_memory_efficiency``.
    prefill_memory_efficiency: float | None = None

    @property
    def prefill_memory(self) -> float:
        return self.prefill_memory_efficiency or self.decode_memory_efficiency


@dataclass(frozen=True)
class Protocol:
    """One NCCL protocol on one link kind: ``base_us + steps x hop_us + bus_bytes / (B x efficiency)``."""

    base_us: float
    hop_us: float
    bandwidth_efficiency: float


@dataclass(frozen=True)
class LinkFit:
    """A link kind's collectives: NCCL picks the fastest protocol; point-to-point is its own fit.
    ``protocols`` empty means: use the scenario's ``latency_us`` per hop and ``bandwidth_efficiency``."""

    protocols: tuple[Protocol, ...]
    p2p_base_us: float | None
    p2p_bandwidth_efficiency: float
    bandwidth_efficiency: float = 0.8  # used only when ``protocols`` is empty
    contention_exponent: float = 0.0  # per-GPU bandwidth / (n/2)^this: 0 for a switch, > 0 for a shared PCIe host


@dataclass(frozen=True)
class CustomAllReduceFit:
    """An engine's own intra-node all-reduce: ``base_us + 2(n-1) x hop_us + 2(n-1)/n x bytes / (B x
    bandwidth_efficiency)``, for messages of at most ``max_bytes`` (0: any size) on at most ``max_gpus``
    (2 where the GPUs share a PCIe fabric: vLLM's custom all-reduce is "not supported on more than two
    PCIe-only GPUs", ``custom_all_reduce.py``)."""

    base_us: float
    hop_us: float
    bandwidth_efficiency: float
    max_bytes: float = 0.0
    max_gpus: float = 8.0


@dataclass(frozen=True)
class EngineKernels:
    """One engine's kernel fits on one GPU (``tables``: which aiconfigurator tables, framework and version).
    A kind left out (``attention`` None, a dtype missing) falls back to the shared fit."""

    tables: str
    gemm: dict[str, GemmFit] = field(default_factory=dict)
    attention: AttentionFit | None = None
    moe: dict[str, GemmFit] = field(default_factory=dict)
    custom_allreduce: CustomAllReduceFit | None = None


@dataclass(frozen=True)
class StepFit:
    """What the operator list leaves out, fitted to whole-step measurements."""

    sustained_compute: float  # achieved share of the microbenchmark GEMM rate in a full model
    layer_overhead_us: float
    step_overhead_us: float
    collective_skew_us: float = 0.0  # per collective call, x log2(group size): waiting for the slowest rank
    sustained_memory: float = 1.0  # achieved HBM rate in a full model over the microbenchmarks' (weights streamed back to back)
    sequence_overhead_us: float = 0.0  # per sequence in the step: scheduling, block tables, sampling on the host


@dataclass(frozen=True)
class GpuCalibration:
    """Everything the cost model needs for one GPU kind. ``entry`` names the calibration entry used
    (a catalog GPU, or ``default``); ``measured`` is False for the default."""

    entry: str
    measured: bool
    gemm: dict[str, GemmFit]  # "bf16", "fp8" (4-bit weights run as bf16 GEMMs after dequantisation)
    attention: AttentionFit
    elementwise_memory_efficiency: float
    intra_node: LinkFit
    inter_node: LinkFit
    step: StepFit  # the stack in use (``Calibration.for_gpu`` sets it from ``steps``)
    steps: dict[str, StepFit] = field(default_factory=dict)  # stack -> fit
    stack: str = ""
    step_measured: bool = False  # this GPU has whole-step measurements on this stack
    kernels: dict[str, EngineKernels] = field(default_factory=dict)  # engine profile -> its own kernel fits
    kernel_engine: str = ""  # whose kernel fits are in place ("": the shared ones)
    moe: dict[str, GemmFit] = field(default_factory=dict)  # fused-MoE grouped GEMM fits in place
    custom_allreduce: CustomAllReduceFit | None = None  # the engine's own all-reduce in place

    def gemm_fit(self, dtype: str) -> GemmFit:
        return self.gemm.get(dtype) or self.gemm["bf16"]

    def moe_fit(self, dtype: str) -> GemmFit:
        """The fused-MoE fit for ``dtype`` (the bf16 one, then the plain GEMM fit, where there is none)."""
        return self.moe.get(dtype) or self.moe.get("bf16") or self.gemm_fit(dtype)

    def with_engine_kernels(self, engine: str | None) -> GpuCalibration:
        """This entry with ``engine``'s own kernel fits in place of the shared ones (unchanged where the
        engine has no tables on this GPU)."""
        k = self.kernels.get(engine or "")
        if k is None:
            return self
        return replace(self, gemm={**self.gemm, **k.gemm}, attention=k.attention or self.attention, moe=dict(k.moe),
                       custom_allreduce=k.custom_allreduce, kernel_engine=engine)


@dataclass(frozen=True)
class Calibration:
    """A whole calibration file: its id, where its numbers came from, the per-GPU entries, the software
    stacks with step measurements, and which stack each engine profile gets by default."""

    id: str
    sources: tuple[str, ...]
    gpus: dict[str, GpuCalibration]
    default: GpuCalibration
    stacks: dict[str, str] = field(default_factory=dict)  # name -> what was measured
    engine_stacks: dict[str, str] = field(default_factory=dict)  # engine profile -> stack

    def stack_for(self, engine: str, requested: str | None = None) -> str:
        """The stack a scenario uses: ``requested`` (``engine.calibration_stack``) or the engine's default.

        Raises:
            OptimizerError: ``requested`` is not a stack of this calibration (names the ones there are).
        """
        stack = requested or self.engine_stacks.get(engine) or next(iter(self.stacks), "")
        if self.stacks and stack not in self.stacks:
            raise OptimizerError(f"{stack!r} is not a software stack of calibration {self.id}; "
                                 f"use one of: {', '.join(self.stacks)}")
        return stack

    def for_gpu(self, name: str, stack: str | None = None, engine: str | None = None) -> GpuCalibration:
        """The entry for GPU ``name`` (catalog name, following ``like:`` aliases; ``default`` if none)
        with ``step`` set to ``stack``'s fit (the default entry's, for a GPU not measured on it) and, given
        ``engine`` (an engine profile name), that engine's kernel fits where it has tables on this GPU."""
        cal = self.gpus.get(name, self.default)
        stack = stack or self.stack_for("")
        fit = cal.steps.get(stack)
        measured = fit is not None and cal.measured
        if fit is None:
            fit = self.default.steps.get(stack, cal.step)
        return replace(cal, step=fit, stack=stack, step_measured=measured).with_engine_kernels(engine)

    def describe(self, name: str, stack: str | None = None, engine: str | None = None) -> str:
        """One line for the plan: the calibration id, the GPU entry used and the software stack, saying so
        when the stack stands in for ``engine`` (its step parameters are another stack's: the engine has no
        measured rows, or its own stack is opt-in, as ``vllm-2024``, whose vLLM v0.3-v0.4 rows predate v0.6)."""
        cal = self.for_gpu(name, stack, engine)
        if not cal.measured:
            where = f"default entry (GPU {name!r} has no measurements: geometric mean of the fitted GPUs)"
        else:
            where = name + ("" if cal.entry == name else f" (as {cal.entry})")
        steps = f"stack {cal.stack}" + ("" if cal.step_measured else " (step parameters: the stack's mean over its GPUs)")
        if engine and not _own_stack(cal.stack, engine):
            own = sorted(name for name in self.stacks if _own_stack(name, engine))
            default = self.engine_stacks.get(engine)
            if default in own:  # the engine's own stack is its default: this one was asked for instead
                why = f"engine.calibration_stack chose it over {engine}'s own {default}"
            elif own:
                why = f"its own stack{'s' if len(own) > 1 else ''} {', '.join(own)} opt-in with engine.calibration_stack"
            else:
                why = f"no {engine} measurements in this calibration"
            steps += f", standing in for {engine} ({why})"
        if cal.kernel_engine:
            own_kernels = cal.kernels[cal.kernel_engine]
            kernels = f"kernel tables {own_kernels.tables}"
            if not own_kernels.moe:
                kernels += " (no fused-MoE table here: routed experts are timed with its GEMM fit)"
        else:
            kernels = "shared kernel tables (aiconfigurator vLLM GEMM and attention, NCCL)"
            if engine and engine != "vllm":
                kernels += f", standing in for {engine} (no {engine} kernel tables for this GPU)"
        return f"{self.id}: {where}, {steps}; {kernels}"


def _own_stack(stack: str, engine: str) -> bool:
    """True when ``stack`` was measured on ``engine``'s own runs: named after it (``vllm``, ``vllm-2024``) or an
    ``optimize calibrate`` refit of it (``measured-vllm-...``)."""
    return stack == engine or stack.startswith((f"{engine}-", f"measured-{engine}-"))


def _build(cls, data: dict[str, Any], where: str):
    try:
        kwargs = {}
        for f in fields(cls):
            if f.name in data:
                value = data[f.name]
                kwargs[f.name] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        obj = cls(**kwargs)
    except TypeError as exc:
        raise OptimizerError(f"calibration file: {where}: {exc}") from None
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not (math.isfinite(value) and value >= 0):
            raise OptimizerError(f"calibration file: {where}.{f.name} = {value} must be finite and >= 0")
        # an efficiency or sustained share divides a time: 0 would make every step infinite (and a later
        # error blame the scenario's bandwidths); a launch, overhead or latency may be 0
        if isinstance(value, float) and value == 0 and ("efficiency" in f.name or f.name.startswith("sustained_")):
            raise OptimizerError(f"calibration file: {where}.{f.name} = 0: an efficiency must be > 0")
    return obj


def _link(data: dict[str, Any], where: str) -> LinkFit:
    protocols = tuple(_build(Protocol, p, f"{where}.protocols[{i}]") for i, p in enumerate(data.get("protocols", ())))
    return LinkFit(
        protocols=protocols,
        p2p_base_us=None if data.get("p2p_base_us") is None else float(data["p2p_base_us"]),
        p2p_bandwidth_efficiency=float(data.get("p2p_bandwidth_efficiency", data.get("bandwidth_efficiency", 0.8))),
        bandwidth_efficiency=float(data.get("bandwidth_efficiency", 0.8)),
        contention_exponent=float(data.get("contention_exponent", 0.0)),
    )


def _engine_kernels(data: dict[str, Any], where: str) -> EngineKernels:
    return EngineKernels(
        tables=str(data["tables"]),
        gemm={dtype: _build(GemmFit, d, f"{where}.gemm.{dtype}") for dtype, d in (data.get("gemm") or {}).items()},
        attention=_build(AttentionFit, data["attention"], f"{where}.attention") if data.get("attention") else None,
        moe={dtype: _build(GemmFit, d, f"{where}.moe.{dtype}") for dtype, d in (data.get("moe") or {}).items()},
        custom_allreduce=(_build(CustomAllReduceFit, data["custom_allreduce"], f"{where}.custom_allreduce")
                          if data.get("custom_allreduce") else None),
    )


def gpu_calibration(entry: str, data: dict[str, Any], *, measured: bool = True) -> GpuCalibration:
    """Parse one GPU entry of the calibration file.

    Raises:
        OptimizerError: a missing or malformed parameter (names the entry and the field).
    """
    where = f"gpus.{entry}"
    try:
        return GpuCalibration(
            entry=entry,
            measured=measured,
            gemm={dtype: _build(GemmFit, d, f"{where}.gemm.{dtype}") for dtype, d in data["gemm"].items()},
            attention=_build(AttentionFit, data["attention"], f"{where}.attention"),
            elementwise_memory_efficiency=float(data["elementwise_memory_efficiency"]),
            intra_node=_link(data["intra_node"], f"{where}.intra_node"),
            inter_node=_link(data["inter_node"], f"{where}.inter_node"),
            step=StepFit(1.0, 0.0, 0.0, 0.0),
            steps={stack: _build(StepFit, d, f"{where}.steps.{stack}") for stack, d in data["steps"].items()},
            kernels={engine: _engine_kernels(d, f"{where}.kernels.{engine}") for engine, d in (data.get("kernels") or {}).items()},
        )
    except (KeyError, AttributeError) as exc:
        raise OptimizerError(f"calibration file: {where} lacks {exc}") from None


def calibration_from_dict(data: dict[str, Any]) -> Calibration:
    """A Calibration from the parsed YAML (``id``, ``sources``, ``gpus``, ``default``); ``gpus`` entries
    may be ``{like: other}`` (a GPU with the same die and no measurements of its own)."""
    raw = data.get("gpus") or {}
    gpus: dict[str, GpuCalibration] = {}
    for name, entry in raw.items():
        if "like" not in entry:
            gpus[name] = gpu_calibration(name, entry)
    for name, entry in raw.items():
        if "like" in entry:
            target = gpus.get(entry["like"])
            if target is None:
                raise OptimizerError(f"calibration file: gpus.{name}.like names {entry['like']!r}, which has no fitted entry")
            gpus[name] = target
    return Calibration(
        id=str(data["id"]),
        sources=tuple(str(s) for s in data.get("sources", ())),
        gpus=gpus,
        default=gpu_calibration("default", data["default"], measured=False),
        stacks={str(k): str(v) for k, v in (data.get("stacks") or {}).items()},
        engine_stacks={str(k): str(v) for k, v in (data.get("engine_stacks") or {}).items()},
    )


@cache
def shipped_calibration() -> Calibration:
    """The calibration in ``optimizer/inputs/catalog/calibration.yaml`` (what every estimate uses unless told)."""
    return calibration_from_dict(calibration_data())


def with_step_fit(base: Calibration, *, calibration_id: str, gpu: str, engine: str, stack: str, fit: StepFit,
                  what: str) -> Calibration:
    """``base`` with ``fit`` as GPU ``gpu``'s step parameters under a new stack ``stack`` (described by
    ``what``), made ``engine``'s default stack, and the id ``calibration_id``: how a serving calibration
    (``optimize calibrate``) refines the shipped one. Every other parameter is ``base``'s.

    Raises:
        OptimizerError: ``gpu`` has no fitted entry in ``base`` (nothing to refine: the kernel and link
            parameters would be the default entry's).
    """
    entry = base.gpus.get(gpu)
    if entry is None:
        raise OptimizerError(f"GPU {gpu!r} has no entry in calibration {base.id}; a serving calibration refines a "
                             f"calibrated GPU ({', '.join(sorted(base.gpus))})")
    refined = replace(entry, steps={**entry.steps, stack: fit})
    # Every other GPU (and the default entry) keeps the step fit the engine had: under the new stack's name
    # it gets the base stack's fit, never a placeholder (the file measured one GPU only).
    before = base.stack_for(engine)

    def keep(cal: GpuCalibration) -> GpuCalibration:
        return replace(cal, steps={**cal.steps, stack: cal.steps[before]}) if before in cal.steps else cal

    gpus = {name: (refined if cal is entry else keep(cal)) for name, cal in base.gpus.items()}  # ``like:`` aliases follow
    return replace(base, id=calibration_id, gpus=gpus, default=keep(base.default), stacks={**base.stacks, stack: what},
                   engine_stacks={**base.engine_stacks, engine: stack})


@cache
def file_calibration(path: str) -> Calibration:
    """The shipped calibration refined by the serving calibration file at ``path``
    (``optimizer/inputs/calibration_file.py`` describes it; ``engine.calibration_file`` names it).

    Raises:
        ScenarioError: the file is unreadable or malformed (file and field named).
        OptimizerError: its GPU has no fitted entry.
    """
    from pathlib import Path

    from optimizer.inputs.loader import read_calibration_file

    data = read_calibration_file(Path(path))
    fit = StepFit(**{name: float(value) for name, value in data["step"].items()})
    what = (f"{data['engine']} on {data['gpu']}: step parameters refitted by optimize calibrate to serving benchmarks "
            f"({path}), from {data['base_stack']} of {data['base_calibration']}")
    return with_step_fit(shipped_calibration(), calibration_id=data["id"], gpu=data["gpu"], engine=data["engine"],
                         stack=data["stack"], fit=fit, what=what)


def calibration_for(scenario: Any) -> Calibration:
    """The calibration a scenario's estimates use: its ``engine.calibration_file`` over the shipped one, or
    the shipped one."""
    path = scenario.engine.calibration_file
    return shipped_calibration() if path is None else file_calibration(path)
