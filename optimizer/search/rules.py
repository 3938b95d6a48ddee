"""The rule set. One object per constraint group, each able to

(a) add itself to the CP-SAT model behind one enforcement literal (``add_to_model``), and
(b) check a concrete plan exactly, returning ``Check(name, formula, lhs, op, rhs, holds)`` with the integers.

The same objects serve the solver, the certificate, the exhaustive oracle and infeasibility explanations.
This module never imports ortools: ``add_to_model`` receives a ``SolverView`` whose ``model`` is the
CP-SAT model, and uses only its methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

from optimizer.model.cost import CostTable, Estimate
from optimizer.model.engines import MemoryLimit, ffn_tp, instances, memory_fraction_flag, memory_limits, usable_bytes
from optimizer.model.memory import MemoryTable, StageMemory, placed_bytes_line
from optimizer.model.parallel import Layout, Plan, divisors
from optimizer.model.placement import rank_map_refusal
from optimizer.inputs.scenario import EngineName, MoeA2aBackend, Scenario, SpeculativeMethod
from optimizer.units import NS_PER_S, human_bytes


@dataclass(frozen=True)
class Check:
    """One rule evaluated on one plan: ``lhs op rhs`` in integers, and a sentence a person can act on."""

    name: str
    formula: str
    lhs: int
    op: str
    rhs: int
    holds: bool
    detail: str = ""


_OPS = {"==": int.__eq__, "<=": int.__le__, ">=": int.__ge__}


def make_check(name: str, formula: str, lhs: int, op: str, rhs: int, detail: str = "") -> Check:
    return Check(name=name, formula=formula, lhs=int(lhs), op=op, rhs=int(rhs), holds=_OPS[op](int(lhs), int(rhs)), detail=detail)


@dataclass(frozen=True)
class PlanContext:
    """Everything a rule needs to check a concrete plan; the table holds the plan's layout at ``index``."""

    scenario: Scenario
    plan: Plan
    table: CostTable
    index: int
    memory: list[StageMemory]
    estimate: Estimate


class SolverView(Protocol):
    """What ``solve.py`` hands to ``add_to_model``: the CP-SAT model and its variables.

    ``x[c]`` is true iff grid layout ``c`` is chosen; ``l_first``, ``l_middle``, ``l_last`` are the layers
    of the first stage, of the largest middle stage and of the last stage (``l_middle_min``: at most the
    smallest middle stage, read by the balance rules); ``tpot_ns`` and
    ``request_latency_ns`` are bounded below by the cost tables.
    """

    model: Any
    scenario: Scenario
    layouts: tuple[Layout, ...]
    table: CostTable
    memory: MemoryTable
    x: list[Any]
    l_first: Any
    l_middle: Any
    l_middle_min: Any
    l_last: Any
    tpot_ns: Any
    request_latency_ns: Any


class Rule:
    """Base: a stable ``name`` and a ``formula`` shown in the certificate. ``relaxable`` is False for the
    rules that define what a plan is (GPU products, a layer split that covers the model): an infeasibility
    explanation names only rules a user could change. ``structural`` is True for the rules without which
    the engine cannot start the plan as written (the sizes, the layer split, the memory): a plan that
    breaks one cannot run, one that breaks only a target or a balance runs and misses it."""

    name = ""
    formula = ""
    relaxable = True
    structural = False

    def check(self, ctx: PlanContext) -> list[Check]:
        raise NotImplementedError

    def add_to_model(self, view: SolverView, lit: Any) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class SizeArrays:
    """The sizes of many layouts as int64 arrays (``tp``, ``pp``, ...), for the rules' grid-wide tests."""

    layouts: tuple[Layout, ...]
    tp: np.ndarray
    pp: np.ndarray
    dp: np.ndarray
    ep: np.ndarray
    etp: np.ndarray
    edp: np.ndarray

    @classmethod
    def of(cls, layouts: tuple[Layout, ...]) -> SizeArrays:
        n = len(layouts)
        return cls(layouts, *(np.fromiter((getattr(lay, k) for lay in layouts), dtype=np.int64, count=n)
                              for k in ("tp", "pp", "dp", "ep", "etp", "edp")))

    def size(self, scenario: Scenario, name: str) -> np.ndarray:
        """A size by name, or ``ffn_tp`` (``engines.ffn_tp``, per layout)."""
        if name == "ffn_tp":
            return np.fromiter((ffn_tp(scenario, lay) for lay in self.layouts), dtype=np.int64, count=len(self.layouts))
        return getattr(self, name)


class LayoutRule(Rule):
    """A rule on the sizes alone. In the solver it forbids, behind its literal, every grid layout its own
    ``evaluate`` rejects, so solver and certificate cannot disagree."""

    structural = True

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        raise NotImplementedError

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        """``evaluate(...).holds`` without the sentence: the certificate checker's test. Subclasses override
        it with the same integer test; a test keeps the two equal on random grids."""
        return self.evaluate(scenario, layout).holds

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        """``holds`` for every layout of ``grid`` at once (bool array): the search's test
        (``candidates.py``). Subclasses vectorise it; a test keeps it equal to ``evaluate``."""
        return np.fromiter((self.holds(scenario, layout) for layout in grid.layouts), dtype=bool, count=len(grid.layouts))

    def check(self, ctx: PlanContext) -> list[Check]:
        return [self.evaluate(ctx.scenario, ctx.plan.layout)]

    def add_to_model(self, view: SolverView, lit: Any) -> None:
        bad = [view.x[c] for c, layout in enumerate(view.layouts) if not self.evaluate(view.scenario, layout).holds]
        if bad:
            view.model.add(sum(bad) == 0).only_enforce_if(lit)


class GpuProduct(LayoutRule):
    name = "gpu_product"
    formula = "tp x pp x dp == num_gpus"
    relaxable = False

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        return layout.tp * layout.pp * layout.dp == scenario.cluster.num_gpus

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        return grid.tp * grid.pp * grid.dp == scenario.cluster.num_gpus

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        n = scenario.cluster.num_gpus
        t, p, d = layout.tp, layout.pp, layout.dp
        word = "and" if t * p * d == n else "but"
        return make_check(self.name, self.formula, t * p * d, "==", n,
                          f"TP x PP x DP = {t} x {p} x {d} = {t * p * d}, {word} the cluster has {n} GPUs")


class MoeProduct(LayoutRule):
    name = "moe_product"
    formula = "etp x ep x edp x pp == num_gpus"
    relaxable = False

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        return layout.etp * layout.ep * layout.edp * layout.pp == scenario.cluster.num_gpus

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        return grid.etp * grid.ep * grid.edp * grid.pp == scenario.cluster.num_gpus

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        n = scenario.cluster.num_gpus
        e, ep, edp, p = layout.etp, layout.ep, layout.edp, layout.pp
        word = "and" if e * ep * edp * p == n else "but"
        return make_check(self.name, self.formula, e * ep * edp * p, "==", n,
                          f"ETP x EP x EDP x PP = {e} x {ep} x {edp} x {p} = {e * ep * edp * p}, {word} the cluster has {n} GPUs")


def _size(scenario: Scenario, layout: Layout, size: str) -> int:
    """A Layout size by name, or ``ffn_tp``: the engine's dense-FFN width (``engines.ffn_tp``)."""
    return ffn_tp(scenario, layout) if size == "ffn_tp" else getattr(layout, size)


class Divisible(LayoutRule):
    """``numerator % size == 0`` for a model width (``field``) and the Layout size that shards it."""

    def __init__(self, name: str, field: str, size: str, numerator: int):
        self.name, self.field, self.size, self.numerator = name, field, size, numerator
        self.formula = f"{field} % {size} == 0"

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        return self.numerator % _size(scenario, layout, self.size) == 0

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        return self.numerator % grid.size(scenario, self.size) == 0

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        size = _size(scenario, layout, self.size)
        rest = self.numerator % size
        detail = f"{self.field} = {self.numerator} is {'not ' if rest else ''}divisible by {self.size.upper()} = {size}"
        if rest:
            fits = [d for d in divisors(scenario.cluster.num_gpus) if self.numerator % d == 0]
            detail += f"; the sizes that divide both {self.numerator} and the {scenario.cluster.num_gpus} GPUs: {', '.join(map(str, fits))}"
        return make_check(self.name, self.formula, rest, "==", 0, detail)


class KvHeadsDivisible(LayoutRule):
    """KV heads over TP. vLLM, SGLang and TensorRT-LLM replicate KV heads when TP exceeds them (each rank
    keeps ``TP / num_key_value_heads`` copies' worth: TP must be a multiple). Megatron-Core does not: its
    ``Attention`` divides ``num_query_groups`` by the TP size (megatron/core/transformer/attention.py,
    ``divide`` asserts divisibility), so TP must divide the KV heads (``replicate=False``)."""

    name = "kv_heads_divisible"

    def __init__(self, *, replicate: bool = True) -> None:
        self.replicate = replicate
        self.formula = ("num_key_value_heads % tp == 0 or tp % num_key_value_heads == 0" if replicate
                        else "num_key_value_heads % tp == 0 (Megatron-Core: num_query_groups % TP)")

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        kv, tp = scenario.model.kv_heads, layout.tp
        return (kv % tp if tp <= kv or not self.replicate else tp % kv) == 0

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        kv = scenario.model.kv_heads
        if not self.replicate:
            return kv % grid.tp == 0
        return np.where(grid.tp <= kv, kv % grid.tp, grid.tp % kv) == 0

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        kv, tp = scenario.model.kv_heads, layout.tp
        if not self.replicate:
            rest = kv % tp
            return make_check(self.name, self.formula, rest, "==", 0,
                              f"{kv} KV heads (num_query_groups) over TP = {tp}: " + (
                                  "split evenly" if not rest else "Megatron-Core requires TP to divide them (it does not "
                                  "replicate KV heads)"))
        rest = kv % tp if tp <= kv else tp % kv
        how = "split evenly" if tp <= kv else "replicated evenly"
        return make_check(self.name, self.formula, rest, "==", 0,
                          f"{kv} KV heads over TP = {tp}: {how}" if not rest else f"{kv} KV heads cannot be {how} over TP = {tp}")


class DraftHeadsDivisible(LayoutRule):
    """A separate draft model (``engine.speculative.method: draft_model``) runs at the target's TP (vLLM:
    ``draft_tensor_parallel_size`` defaults to the target's and ``DraftModelProposer`` refuses another,
    vllm/config/speculative.py ``_verify_and_get_draft_tp``, vllm/v1/spec_decode/draft_model.py; SGLang's
    STANDALONE draft worker shares ``--tp-size``), so its attention is sharded by the target's rules: its
    ``num_attention_heads`` divisible by TP, and its KV heads split or replicated evenly (``KvHeadsDivisible``,
    ``replicate`` as for the target; no KV-head test for an MLA draft). Qwen2.5-0.5B (14 heads, 2 KV heads)
    drafts at TP 1 or 2, not 4. Exact: ``lhs`` is the sum of the two remainders."""

    name = "draft_heads"

    def __init__(self, *, heads: int, kv_heads: int | None, replicate: bool = True) -> None:
        self.heads, self.kv_heads, self.replicate = heads, kv_heads, replicate
        kv = ("" if kv_heads is None else " and (draft num_key_value_heads % tp == 0" + (
            " or tp % draft num_key_value_heads == 0)" if replicate else ")"))
        self.formula = f"draft num_attention_heads % tp == 0{kv}"

    def _kv_rest(self, tp: int) -> int:
        kv = self.kv_heads
        if kv is None:
            return 0
        return kv % tp if tp <= kv or not self.replicate else tp % kv

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        return self.heads % layout.tp == 0 and self._kv_rest(layout.tp) == 0

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        ok = self.heads % grid.tp == 0
        kv = self.kv_heads
        if kv is None:
            return ok
        if not self.replicate:
            return ok & (kv % grid.tp == 0)
        return ok & (np.where(grid.tp <= kv, kv % grid.tp, grid.tp % kv) == 0)

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        tp = layout.tp
        heads_rest, kv_rest = self.heads % tp, self._kv_rest(tp)
        parts = [f"the draft's {self.heads} attention heads are {'not ' if heads_rest else ''}divisible by TP = {tp}"]
        if self.kv_heads is not None:
            how = "split" if tp <= self.kv_heads or not self.replicate else "replicated"
            parts.append(f"its {self.kv_heads} KV heads {'cannot be ' if kv_rest else 'are '}{how} evenly")
        detail = "; ".join(parts) + " (the draft model runs at the target's TP)"
        if heads_rest or kv_rest:
            fits = [d for d in divisors(scenario.cluster.num_gpus) if self.heads % d == 0 and self._kv_rest(d) == 0]
            detail += f"; the TPs the draft allows on {scenario.cluster.num_gpus} GPUs: {', '.join(map(str, fits))}"
        return make_check(self.name, self.formula, heads_rest + kv_rest, "==", 0, detail)


class BlockAligned(LayoutRule):
    """Block-quantised weights: each rank's share of a sharded width stays a multiple of the block."""

    def __init__(self, name: str, field: str, size: str, width: int, block: int):
        self.name, self.field, self.size, self.width, self.block = name, field, size, width, block
        self.formula = f"({field} / {size}) % {block} == 0"

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        size = _size(scenario, layout, self.size)
        return not ((self.width % size) or ((self.width // size) % self.block))

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        size = grid.size(scenario, self.size)
        return (self.width % size == 0) & ((self.width // size) % self.block == 0)

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        size = _size(scenario, layout, self.size)
        rest = (self.width % size) or ((self.width // size) % self.block)
        return make_check(self.name, self.formula, rest, "==", 0,
                          f"{self.field} / {self.size.upper()} = {self.width} / {size} must be a multiple of the {self.block}-wide quantisation block")


class TpWithinNode(LayoutRule):
    name = "tp_within_node"
    formula = "gpus_per_node % tp == 0"

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        g, tp = scenario.cluster.gpus_per_node, layout.tp
        return (tp % g if tp > g and scenario.cluster.allow_tp_across_nodes else g % tp) == 0

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        g, tp = scenario.cluster.gpus_per_node, grid.tp
        across = bool(scenario.cluster.allow_tp_across_nodes) & (tp > g)
        return np.where(across, tp % g, g % tp) == 0

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        g, tp = scenario.cluster.gpus_per_node, layout.tp
        if scenario.cluster.allow_tp_across_nodes and tp > g:
            return make_check(self.name, "tp % gpus_per_node == 0 (TP across nodes allowed)", tp % g, "==", 0,
                              f"TP = {tp} must span whole nodes of {g} GPUs")
        if g % tp == 0:
            return make_check(self.name, self.formula, 0, "==", 0, f"TP = {tp} fits evenly in a node of {g} GPUs")
        why = (" (cluster.allow_tp_across_nodes is false; set it true to let TP span whole nodes on the inter-node link)"
               if tp > g else "")
        return make_check(self.name, self.formula, g % tp, "==", 0, f"TP = {tp} does not fit evenly in a node of {g} GPUs{why}")


class InterleavedOneStage(LayoutRule):
    """A model whose dense and MoE layers interleave (Llama 4 Maverick: ``interleave_moe_layer_step`` 2) runs
    in one pipeline stage: the memory tables and the split search know a stage's dense and MoE layers only as
    a dense-first prefix (``split.leading_dense_layers``), which for interleaved layers would put every dense
    layer in the first stage and every MoE layer after it, and could promise a stage less memory than its real
    mix needs. With PP = 1 the one stage holds all layers and the counts are exact."""

    name = "interleaved_layers_one_stage"
    formula = "pp == 1 (interleave_moe_layer_step > 1)"

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        return layout.pp == 1

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        return grid.pp == 1

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        step = scenario.model.interleave_moe_layer_step
        detail = (f"PP = {layout.pp}: one MoE layer in every {step}; "
                  + ("one stage holds them all" if layout.pp == 1 else
                     "a pipeline split of interleaved dense and MoE layers is not modelled (use PP 1: TP, DP and EP)"))
        return make_check(self.name, self.formula, layout.pp, "==", 1, detail)


def speculative_pipeline_refusal(scenario: Scenario) -> str | None:
    """Why the scenario's engine will not run its speculative decoding with PP > 1 (None: it does, or no
    speculation). vLLM: EAGLE-3 runs under pipeline parallelism (vllm-project/vllm PR #55623, its test
    tests/v1/e2e/spec_decode/eagle/test_eagle3_pp.py); MTP does not start or corrupts output (issues #49355,
    #52069, #57755, open) and the docs call the other methods not composable with PP. SGLang: server_args.py
    asserts pp_size == 1 with a speculative algorithm unless the experimental SGLANG_ENABLE_PP_SPEC=1 (PR
    #30775), which the planner does not assume. TensorRT-LLM and Megatron: not restricted here (unverified)."""
    spec, engine = scenario.engine.speculative, scenario.engine.name
    if spec is None:
        return None
    if engine is EngineName.VLLM and spec.method is not SpeculativeMethod.EAGLE3:
        return f"vLLM runs {spec.method.value} speculative decoding only with PP 1 (EAGLE-3 is the method it pipelines)"
    if engine is EngineName.SGLANG:
        return "SGLang runs speculative decoding only with --pp-size 1 (server_args.py; SGLANG_ENABLE_PP_SPEC is experimental)"
    return None


class MoeDenseTpOne(LayoutRule):
    """SGLang's ``--moe-dense-tp-size 1`` (``engine.moe_dense_tp_size``) runs the dense MLP on each GPU's own
    tokens; the planner models it with attention TP 1, the data-parallel attention of the large-scale EP
    recipes (lmsys.org 2025-05-05), where the dense MLP's width is then 1 (``engines.ffn_tp``)."""

    name = "moe_dense_tp_one"
    formula = "tp == 1 (engine.moe_dense_tp_size 1)"

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        return layout.tp == 1

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        return grid.tp == 1

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        detail = (f"attention TP = {layout.tp}: " + ("the dense MLP runs on each GPU's own tokens" if layout.tp == 1 else
                  "--moe-dense-tp-size 1 is planned with data-parallel attention (TP 1) only"))
        return make_check(self.name, self.formula, layout.tp, "==", 1, detail)


class SpeculativeOneStage(LayoutRule):
    """Speculative decoding on an engine that does not pipeline it runs in one stage
    (``speculative_pipeline_refusal`` has the engines and sources): PP = 1."""

    name = "speculative_one_stage"
    formula = "pp == 1 (engine.speculative on an engine that does not pipeline it)"

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        return layout.pp == 1

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        return grid.pp == 1

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        why = speculative_pipeline_refusal(scenario) or ""
        detail = f"PP = {layout.pp}: " + ("one stage" if layout.pp == 1 else why)
        return make_check(self.name, self.formula, layout.pp, "==", 1, detail)


class DeepepWholeExperts(LayoutRule):
    """DeepEP moves whole tokens to whole experts: with ``engine.moe_a2a_backend: deepep`` the experts are not
    split inside (ETP = 1). SGLang sets ``ep_size = tp_size`` when it is on (``server_args.py``
    ``_handle_a2a_moe``: "DeepEP MoE is enabled. The expert parallel size is adjusted to be the same as the
    tensor parallel size"); vLLM's deepep backends run under ``--enable-expert-parallel`` (ETP = 1)."""

    name = "deepep_whole_experts"
    formula = "etp == 1 (moe_a2a_backend: deepep)"

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        return layout.etp == 1

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        return grid.etp == 1

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        ok = layout.etp == 1
        detail = (f"ETP = {layout.etp}: DeepEP sends tokens to whole experts on EP = {layout.ep} ranks"
                  + ("" if ok else "; with moe_a2a_backend: deepep the experts are split by expert only (SGLang sets "
                                   "ep_size = tp_size), or set moe_a2a_backend: none"))
        return make_check(self.name, self.formula, layout.etp, "==", 1, detail)


class VllmFolding(LayoutRule):
    """vLLM's MoE layout (docs: serving/expert_parallel_deployment): with ``--enable-expert-parallel``
    ``EP = TP x DP`` of one engine instance and experts are not tensor-split (ETP = 1); without it the
    experts are tensor-parallel over the same TP x DP ranks (EP = 1). EDP counts engine instances."""

    name = "engine_folding"

    def __init__(self, expert_parallel: bool):
        self.expert_parallel = expert_parallel
        self.formula = "etp == 1 and ep % tp == 0" if expert_parallel else "ep == 1 and etp % tp == 0"

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        if self.expert_parallel:
            return layout.etp == 1 and layout.ep % layout.tp == 0
        return layout.ep == 1 and layout.etp % layout.tp == 0

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        if self.expert_parallel:
            return (grid.etp == 1) & (grid.ep % grid.tp == 0)
        return (grid.ep == 1) & (grid.etp % grid.tp == 0)

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        if self.expert_parallel:
            if layout.etp != 1:
                return make_check(self.name, self.formula, layout.etp, "==", 1, f"vLLM with expert parallel keeps ETP = 1, plan has ETP = {layout.etp}")
            return make_check(self.name, self.formula, layout.ep % layout.tp, "==", 0,
                              f"vLLM sets EP = TP x DP per instance: EP = {layout.ep} must be a multiple of TP = {layout.tp}")
        if layout.ep != 1:
            return make_check(self.name, self.formula, layout.ep, "==", 1, f"vLLM without --enable-expert-parallel keeps EP = 1, plan has EP = {layout.ep}")
        return make_check(self.name, self.formula, layout.etp % layout.tp, "==", 0,
                          f"vLLM shards experts over TP x DP per instance: ETP = {layout.etp} must be a multiple of TP = {layout.tp}")


class SglangFolding(LayoutRule):
    """SGLang 0.5.23's MoE layout: one server's ``--tp-size`` group (all GPUs of a pipeline stage of one
    instance) holds attention TP x attention DP (``--attn-dp-size``) and the experts ``--ep-size`` EP x
    ``tp_size / ep_size`` ETP (``runtime_context.py`` ``derive_attn_tp_size``, ``derive_parallel_widths``:
    ``moe_tp_size = tp_size // moe_ep_size // moe_dp_size``; ``parallel_state.py`` builds the MoE groups
    inside each TP group). With ``--moe-dp-size 1`` there is no expert data parallelism inside an
    instance, so EDP counts instances: ``ETP x EP = TP x DP / EDP``, which holds iff TP divides ETP x EP.
    (``--moe-dp-size > 1`` is left out: it needs PP = 1 and makes the instance count ambiguous.)"""

    name = "engine_folding"
    formula = "(etp x ep) % tp == 0  (ETP x EP = SGLang's --tp-size = TP x attention DP; EDP = instances)"

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        return (layout.etp * layout.ep) % layout.tp == 0

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        return (grid.etp * grid.ep) % grid.tp == 0

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        group = layout.etp * layout.ep
        rest = group % layout.tp
        return make_check(self.name, self.formula, rest, "==", 0,
                          f"SGLang shards an instance's experts over its --tp-size = ETP x EP = {layout.etp} x {layout.ep} = {group} GPUs, "
                          f"which must hold whole attention TP = {layout.tp} groups" + (" and does" if not rest else
                          f"; {group} is not a multiple of {layout.tp}"))


class TrtllmFolding(LayoutRule):
    """TensorRT-LLM 1.2's MoE layout (PyTorch backend, ``tensorrt_llm/mapping.py``): an instance's
    ``tp_size`` GPUs per stage run attention either tensor parallel (TP = tp_size) or, with
    ``enable_attention_dp``, data parallel (TP = 1, DP = tp_size; ``_torch/modules/attention.py``), never
    in between; the experts split ``moe_tp_size x moe_ep_size = tp_size`` ("moe_tp_size * moe_ep_size *
    moe_cluster_size must equal to moe_world_size"), with no expert data parallelism inside an instance,
    so EDP counts instances and ``ETP x EP = TP x DP / EDP``."""

    name = "engine_folding"
    formula = "(etp x ep) % tp == 0 and (tp == 1 or dp == edp)  (attention DP all or nothing per instance)"

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        group = layout.etp * layout.ep
        return group % layout.tp == 0 and not (layout.tp > 1 and group // layout.tp > 1)

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        group = grid.etp * grid.ep
        return (group % grid.tp == 0) & ~((grid.tp > 1) & (group // grid.tp > 1))

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        group = layout.etp * layout.ep
        if group % layout.tp:
            return make_check(self.name, self.formula, group % layout.tp, "==", 0,
                              f"TensorRT-LLM shards an instance's experts over its tp_size = ETP x EP = {group} GPUs, "
                              f"not a multiple of TP = {layout.tp}")
        per_instance = group // layout.tp  # attention DP ranks inside one instance
        mixed = layout.tp > 1 and per_instance > 1
        return make_check(self.name, self.formula, int(mixed), "==", 0,
                          f"TensorRT-LLM runs an instance's attention with TP = tp_size or with enable_attention_dp (TP = 1); "
                          f"the plan has TP = {layout.tp} with {per_instance} attention-DP rank(s) per instance"
                          + (", which it cannot run" if mixed else ""))


class EnginePlacement(LayoutRule):
    """The engine starts every instance on the GPUs the plan's rank map gives its ranks, so the estimate,
    which prices each collective on the link the rank map puts it on (``cost.grid``), describes the
    deployment (issue 13 item 7: Qwen3-235B on 16 H100 under vLLM won as TP 1 PP 2 DP 8 EP 8, whose DP
    ranks each hold a stage on both nodes; vLLM runs whole DP ranks per node, so its EP group would have
    crossed the nodes the estimate kept it inside). Where each engine can run which GPUs, with sources:
    ``model/placement.py``; ``outputs/launch.py`` launches the rank map of every layout this rule passes.

    ``holds`` and ``holds_grid`` ask ``placement.rank_map_refusal`` (whole runs of ranks, cached per TP,
    PP, DP per instance, instances and node size); a test ties it to the rank-by-rank
    ``placement.rank_map_blocks`` that the launch uses. A layout whose instances do not split DP (the
    folding rule rejects it) passes here, so that one rule names it."""

    # Not structural: the engine does run such a plan, on another placement than its rank map; what fails
    # is that the estimate would not describe it. verify/estimate say "runs but breaks", not "cannot run".
    structural = False
    name = "engine_placement"
    formula = "refused == 0 (refused: 1 when the engine cannot start some instance on its rank-map GPUs)"

    @staticmethod
    def _refusal(scenario: Scenario, layout: Layout) -> str | None:
        n = instances(scenario, layout)
        if layout.dp % n:
            return None
        return rank_map_refusal(scenario.engine.name, tp=layout.tp, pp=layout.pp, dp_i=layout.dp // n, instances=n,
                                gpus_per_node=scenario.cluster.gpus_per_node)

    def holds(self, scenario: Scenario, layout: Layout) -> bool:
        return self._refusal(scenario, layout) is None

    def holds_grid(self, scenario: Scenario, grid: SizeArrays) -> np.ndarray:
        count = grid.edp if scenario.model.is_moe else grid.dp
        if not len(count):
            return np.ones(0, dtype=bool)
        # one verdict per distinct (TP, PP, DP, instances), found by a 1-D unique of one integer per layout
        # (an axis=0 unique sorts rows, several times slower on the 171,500 layouts of 5,040 GPUs)
        m = int(max(grid.tp.max(), grid.pp.max(), grid.dp.max(), count.max())) + 1
        if m**4 < 1 << 62:
            keys, inverse = np.unique(((grid.tp * m + grid.pp) * m + grid.dp) * m + count, return_inverse=True)
            rest, n = np.divmod(keys, m)
            rest, dp = np.divmod(rest, m)
            tp, pp = np.divmod(rest, m)
        else:  # two pairs, then the pair of their indices
            (tp, pp, i1), (dp, n, i2) = (_pair_unique(a, b) for a, b in ((grid.tp, grid.pp), (grid.dp, count)))
            keys, inverse = np.unique(i1 * len(dp) + i2, return_inverse=True)
            j1, j2 = np.divmod(keys, len(dp))
            tp, pp, dp, n = tp[j1], pp[j1], dp[j2], n[j2]
        verdict = dp % n != 0  # the folding rule's to reject
        gpn, engine = scenario.cluster.gpus_per_node, scenario.engine.name
        for k in (~verdict).nonzero()[0].tolist():
            verdict[k] = rank_map_refusal(engine, tp=int(tp[k]), pp=int(pp[k]), dp_i=int(dp[k] // n[k]), instances=int(n[k]),
                                          gpus_per_node=gpn) is None
        return verdict[np.asarray(inverse).reshape(-1)]

    def evaluate(self, scenario: Scenario, layout: Layout) -> Check:
        why = self._refusal(scenario, layout)
        n = instances(scenario, layout)
        sizes = (f"{n} instance(s) of TP x PP x DP/instances = {layout.tp} x {layout.pp} x {max(layout.dp // n, 1)} "
                 f"GPUs on nodes of {scenario.cluster.gpus_per_node}")
        engine = scenario.engine.name.value
        if why is None:
            return make_check(self.name, self.formula, 0, "==", 0, f"{engine} runs the rank map: {sizes}")
        return make_check(self.name, self.formula, 1, "==", 0,
                          f"{engine} cannot run the rank map ({sizes}): {why}; it would place the ranks otherwise, "
                          f"and the estimate would not describe the deployment")


def _pair_unique(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (a, b) pairs as two arrays, and each position's index among them."""
    m = int(b.max()) + 1
    values, inverse = np.unique(a * m + b, return_inverse=True)
    first, second = np.divmod(values, m)
    return first, second, np.asarray(inverse).reshape(-1)


class LayerSplit(Rule):
    """Layers per stage: PP entries, each >= 1, summing to ``num_hidden_layers``."""

    name = "layer_split"
    formula = "len(layers_per_stage) == pp, each >= 1, sum == num_hidden_layers"
    relaxable = False
    structural = True

    def check(self, ctx: PlanContext) -> list[Check]:
        layers, pp, total = ctx.plan.layers_per_stage, ctx.plan.layout.pp, ctx.scenario.model.num_hidden_layers
        checks = [
            make_check(f"{self.name}[stages]", "len(layers_per_stage) == pp", len(layers), "==", pp,
                       f"{len(layers)} stages listed for PP = {pp}"),
            make_check(f"{self.name}[sum]", "sum(layers_per_stage) == num_hidden_layers", sum(layers), "==", total,
                       f"stages hold {sum(layers)} layers, the model has {total}"),
            make_check(f"{self.name}[min]", "min(layers_per_stage) >= 1", min(layers, default=0), ">=", 1,
                       "every stage needs at least one layer"),
        ]
        return checks

    def add_to_model(self, view: SolverView, lit: Any) -> None:
        m, total = view.model, view.scenario.model.num_hidden_layers
        for c, layout in enumerate(view.layouts):
            on = [view.x[c], lit]
            if layout.pp == 1:
                m.add(view.l_first == total).only_enforce_if(on)
            elif layout.pp == 2:
                m.add(view.l_first + view.l_last == total).only_enforce_if(on)
            else:
                middle = layout.pp - 2
                m.add(view.l_first + view.l_last + middle <= total).only_enforce_if(on)
                m.add(view.l_first + view.l_last + middle * view.l_middle >= total).only_enforce_if(on)
                m.add(view.l_middle >= 1).only_enforce_if(on)
            if layout.pp >= 2:
                m.add(view.l_first >= 1).only_enforce_if(on)
                m.add(view.l_last >= 1).only_enforce_if(on)


class EvenLayers(Rule):
    """Every stage holds the same number of layers (only when ``search.allow_uneven_layers`` is false)."""

    name = "even_layers"
    formula = "max(layers_per_stage) == min(layers_per_stage) (search.allow_uneven_layers is false)"

    def check(self, ctx: PlanContext) -> list[Check]:
        layers = ctx.plan.layers_per_stage
        return [make_check(self.name, self.formula, max(layers, default=0), "==", min(layers, default=0),
                           f"stages hold {min(layers, default=0)} to {max(layers, default=0)} layers; "
                           "search.allow_uneven_layers is false")]

    def add_to_model(self, view: SolverView, lit: Any) -> None:
        m, total = view.model, view.scenario.model.num_hidden_layers
        for c, layout in enumerate(view.layouts):
            on = [view.x[c], lit]
            if total % layout.pp:
                m.add(view.x[c] == 0).only_enforce_if(lit)
                continue
            share = total // layout.pp
            m.add(view.l_first == share).only_enforce_if(on)
            if layout.pp >= 2:
                m.add(view.l_last == share).only_enforce_if(on)
            if layout.pp >= 3:
                m.add(view.l_middle == share).only_enforce_if(on)


class MemoryCap(Rule):
    """Every GPU within the engine's memory limits (``engines.memory_limits``): under vLLM's meaning
    weights + KV cache + activations + runtime (reserve, CUDA graphs, communication buffers) <=
    memory_bytes x gpu_memory_utilization; SGLang's and TensorRT-LLM's as their fractions split memory.
    Both sides are integers: an integer total fits under ``memory x p/q`` iff it is ``<= floor(memory x p/q)``."""

    name = "memory_cap"
    structural = True  # over the cap the engine runs out of memory at start, or cannot hold the planned batch
    formula = "weights + kv_cache + activations + runtime <= floor(memory_bytes x gpu_memory_utilization)"

    def __init__(self, scenario: Scenario | None = None):
        if scenario is not None:  # the engine's own limits (vLLM's is the class formula)
            self.formula = "; ".join(limit.formula for limit in memory_limits(scenario))

    @staticmethod
    def cap_bytes(scenario: Scenario) -> int:
        """What a GPU's whole footprint must fit in (``engines.usable_bytes``)."""
        return usable_bytes(scenario)

    def check(self, ctx: PlanContext) -> list[Check]:
        limits = memory_limits(ctx.scenario)
        return [self._check(ctx.scenario, s, limit) for s in ctx.memory for limit in limits]

    def _check(self, scenario: Scenario, s: StageMemory, limit: MemoryLimit) -> Check:
        name = f"{self.name}[stage={s.stage}{',' + limit.label if limit.label else ''}]"
        lhs, cap = s.charge(limit), limit.cap
        runtime = s.reserve_bytes + s.cuda_graph_bytes + s.comm_buffer_bytes
        flag = memory_fraction_flag(scenario)
        advice = "; shard more (TP, PP, EP), shrink the batch or use more memory"
        if scenario.engine.name is EngineName.SGLANG and limit.label:
            text = (f"a stage-{s.stage} GPU needs {human_bytes(s.activation_bytes)} activations + {human_bytes(s.cuda_graph_bytes)} "
                    f"CUDA graphs = {human_bytes(lhs)} outside {flag}, which leaves {human_bytes(max(cap, 0))}"
                    + ("" if lhs <= cap else f": {human_bytes(lhs - cap)} short; lower {flag} or shrink the prefill chunk"))
        elif scenario.engine.name is EngineName.SGLANG:
            text = (f"a stage-{s.stage} GPU holds {human_bytes(s.weights_bytes)} weights + {human_bytes(s.kv_cache_bytes)} KV cache "
                    f"= {human_bytes(lhs)} of the {human_bytes(max(cap, 0))} that {flag} gives them"
                    + ("" if lhs <= cap else f": {human_bytes(lhs - cap)} over" + advice))
        elif scenario.engine.name is EngineName.TENSORRT_LLM:
            rest = s.weights_bytes + s.activation_bytes + runtime
            free = scenario.cluster.gpu.memory_bytes - rest
            u = scenario.search.gpu_memory_utilization
            room = max(free, 0) * u.numerator // u.denominator
            text = (f"a stage-{s.stage} GPU holds {human_bytes(s.kv_cache_bytes)} KV cache against {flag} = {float(u):g} of the "
                    f"{human_bytes(max(free, 0))} free after {human_bytes(s.weights_bytes)} weights + {human_bytes(s.activation_bytes)} "
                    f"activations + {human_bytes(runtime)} runtime: {human_bytes(room)}"
                    + ("" if lhs <= cap else f", {human_bytes(max(s.kv_cache_bytes - room, 1))} over" + advice))
        else:
            text = (f"a stage-{s.stage} GPU holds {human_bytes(s.weights_bytes)} weights + {human_bytes(s.kv_cache_bytes)} "
                    f"KV cache + {human_bytes(s.activation_bytes)} activations + {human_bytes(runtime)} runtime = "
                    f"{human_bytes(s.total_bytes)} of {human_bytes(cap)} usable"
                    + ("" if lhs <= cap else f": {human_bytes(lhs - cap)} over" + advice))
        return make_check(name, limit.formula, lhs, "<=", cap, text)

    def add_to_model(self, view: SolverView, lit: Any) -> None:
        m = view.model
        model = view.scenario.model
        dense, total = model.num_dense_layers, model.num_hidden_layers
        for mem, cap in view.memory.with_caps(view.scenario):
            for c, layout in enumerate(view.layouts):
                on = [view.x[c], lit]
                if layout.pp == 1:
                    only = dense * mem.dense_layer[c] + (total - dense) * mem.moe_layer[c] + mem.fixed_only[c]
                    if only > cap:
                        m.add(view.x[c] == 0).only_enforce_if(lit)
                    continue
                # The search keeps every dense layer in the first stage (see solve.py), so later stages are MoE.
                first_const = dense * (mem.dense_layer[c] - mem.moe_layer[c]) + mem.fixed_first[c]
                for layers, per_layer, const in ((view.l_first, mem.moe_layer[c], first_const),
                                                 (view.l_last, mem.moe_layer[c], mem.fixed_last[c]),
                                                 *(((view.l_middle, mem.moe_layer[c], mem.fixed_middle[c]),) if layout.pp >= 3 else ())):
                    _add_stage_cap(m, layers=layers, per_layer=per_layer, const=const, cap=cap, total=total, on=on)


def _add_stage_cap(m: Any, *, layers: Any, per_layer: int, const: int, cap: int, total: int, on: list[Any]) -> None:
    """``layers x per_layer + const <= cap`` with every number kept inside CP-SAT's 64-bit range and the
    meaning unchanged: skipped when even ``total`` layers fit; the layout forbidden when ``const`` alone
    does not; else ``per_layer`` clamped to ``cap + 1`` (the same verdict for ``layers`` 0 or >= 1)."""
    if total * per_layer + const <= cap:
        return
    if const > cap:
        m.add(on[0] == 0).only_enforce_if(on[1])
        return
    m.add(layers * min(per_layer, cap + 1 - const) + const <= cap).only_enforce_if(on)


class _Balance(Rule):
    """Load balance over the plan's GPUs, as deployment reviews state it ("within 1% across GPUs"), in
    integers: ``100 x (max - min) <= pct x max`` over the pipeline stages, read exactly with ``pct = p/q``
    as ``100 x q x (max - min) <= p x max``. Every GPU of a stage (its TP, EP and ETP ranks, every DP
    replica) carries the same work and bytes in this model, so max and min over GPUs are max and min over
    stages; one stage (PP = 1) is balanced. Subclasses say which per-stage integer is compared."""

    field = ""
    quantity = ""  # how a stage's value reads in a sentence

    def pct(self, scenario: Scenario) -> Fraction:
        return getattr(scenario.targets, self.field)

    def stage_values(self, ctx: PlanContext) -> list[int]:
        raise NotImplementedError

    def value_text(self, value: int) -> str:
        raise NotImplementedError

    def check(self, ctx: PlanContext) -> list[Check]:
        values = self.stage_values(ctx)
        pct = self.pct(ctx.scenario)
        p, q = pct.numerator, pct.denominator
        hi, lo = max(values), min(values)
        lhs, rhs = 100 * q * (hi - lo), p * hi
        total = sum(values) or 1
        shares = "; ".join(f"stage {s}: {layers} layers, {100 * v / total:.1f}% of {self.quantity} ({self.value_text(v)})"
                           for s, (layers, v) in enumerate(zip(ctx.plan.layers_per_stage, values)))
        rel = "<=" if lhs <= rhs else ">"
        if q == 1:
            verdict = f"100 x (max - min) = 100 x ({hi} - {lo}) = {lhs} {rel} {p} x max = {p} x {hi} = {rhs}"
        else:
            verdict = (f"with pct = {p}/{q}, 100 x {q} x (max - min) = {100 * q} x ({hi} - {lo}) = {lhs} {rel} "
                       f"{p} x max = {p} x {hi} = {rhs}")
        return [make_check(self.name, self.formula, lhs, "<=", rhs, f"{shares}; {verdict}")]

    def lines(self, view: SolverView, c: int) -> tuple[int, int, int, int]:
        """Layout ``c``'s stage value as ``layers x per_layer + const`` for its first, middle and last
        stages: ``(per_layer, first_const, middle_const, last_const)``; the first stage holds the dense
        layers (the search space)."""
        raise NotImplementedError

    def add_to_model(self, view: SolverView, lit: Any) -> None:
        """The split formulation (the double check): variables ``hi >= every stage`` and ``lo <= every
        stage`` with ``(100 q - p) x hi <= 100 q x lo``, which holds for some such pair iff the split is
        balanced. Middle stages hold between ``l_middle_min`` and ``l_middle`` layers each, which some
        split of the middle layers meets iff ``(pp - 2) x l_middle_min <= middle layers``."""
        pct = self.pct(view.scenario)
        if pct >= 100:
            return
        p, q = pct.numerator, pct.denominator
        m, total = view.model, view.scenario.model.num_hidden_layers
        rows = {c: self.lines(view, c) for c, layout in enumerate(view.layouts) if layout.pp > 1}
        ub = max((total * per + max(consts) for per, *consts in rows.values()), default=0)
        hi, lo = m.new_int_var(0, ub, f"{self.name}_max"), m.new_int_var(0, ub, f"{self.name}_min")
        m.add((100 * q - p) * hi <= 100 * q * lo).only_enforce_if(lit)
        for c, (per, first, middle, last) in rows.items():
            pp, on = view.layouts[c].pp, [view.x[c], lit]
            for most, least, const in ((view.l_first, view.l_first, first), (view.l_last, view.l_last, last),
                                       *(((view.l_middle, view.l_middle_min, middle),) if pp >= 3 else ())):
                m.add(most * per + const <= hi).only_enforce_if(on)
                m.add(least * per + const >= lo).only_enforce_if(on)
            if pp >= 3:
                m.add(view.l_middle_min >= 1).only_enforce_if(on)
                m.add(view.l_middle_min <= view.l_middle).only_enforce_if(on)
                m.add(view.l_first + view.l_last + (pp - 2) * view.l_middle_min <= total).only_enforce_if(on)


class ComputeBalance(_Balance):
    """``targets.max_compute_imbalance_pct`` over each stage's decode step time (integer ns, as
    ``cost.estimate`` adds it up: the quantity the slowest-stage search minimises)."""

    name = "compute_balance"
    field = "max_compute_imbalance_pct"
    quantity = "compute"
    formula = "100 x (max - min) <= targets.max_compute_imbalance_pct x max over the stages' decode step ns"

    def stage_values(self, ctx: PlanContext) -> list[int]:
        return list(ctx.estimate.decode_stage_ns)

    def value_text(self, value: int) -> str:
        return f"{value} ns"

    def lines(self, view: SolverView, c: int) -> tuple[int, int, int, int]:
        dec, k = view.table.decode, _leading_dense(view.scenario)
        dd, dm = int(dec.dense_layer_ns[c]), int(dec.moe_layer_ns[c])
        return dm, k * (dd - dm) + int(dec.first_extra_ns[c]), 0, int(dec.last_extra_ns[c])


class MemoryBalance(_Balance):
    """``targets.max_memory_imbalance_pct`` over the bytes a stage's GPU holds (``StageMemory.placed_bytes``:
    weights + KV cache + activations)."""

    name = "memory_balance"
    field = "max_memory_imbalance_pct"
    quantity = "memory"
    formula = "100 x (max - min) <= targets.max_memory_imbalance_pct x max over the stages' weights + KV cache + activations bytes"

    def stage_values(self, ctx: PlanContext) -> list[int]:
        return [s.placed_bytes for s in ctx.memory]

    def value_text(self, value: int) -> str:
        return f"{value} B = {human_bytes(value)}"

    def lines(self, view: SolverView, c: int) -> tuple[int, int, int, int]:
        b = placed_bytes_line(scenario=view.scenario, layout=view.layouts[c], batch=view.table.batch[c])
        k = _leading_dense(view.scenario)
        return b.moe_layer, k * (b.dense_layer - b.moe_layer) + b.fixed_first, b.fixed_middle, b.fixed_last


BALANCE_RULES = (ComputeBalance, MemoryBalance)


def _leading_dense(scenario: Scenario) -> int:
    """Dense layers the first stage holds in the search space (as ``split.leading_dense_layers``, a
    module of this one's layer)."""
    return scenario.model.num_dense_layers if scenario.model.is_moe else 0


def _ns_text(ns: int, unit: str) -> str:
    """Whole ns for people, in ``ms`` with three decimals; beyond 1e9 s a phrase, so a target of 1e300 s
    prints instead of overflowing a float."""
    if ns >= 10**18:
        return "over 1e9 s"
    return f"{ns / 1e6:.3f} {unit}"


def target_bound_ns(seconds) -> int:
    """Largest whole nanosecond count within an exact target in seconds (a ``Fraction``)."""
    value = seconds * NS_PER_S
    return value.numerator // value.denominator




# Every latency variable of the CP-SAT model is bounded below this (solve.py checks it before building), so
# a target at or above it constrains nothing and is clamped: CP-SAT needs every coefficient in 64 bits.
SOLVER_INT_LIMIT = 1 << 62


def _solver_bound(value: int) -> int:
    return min(value, SOLVER_INT_LIMIT)


def _latency_check(rule: Rule, label: str, value_ns: int, bound_ns: int) -> list[Check]:
    return [make_check(rule.name, rule.formula, value_ns, "<=", bound_ns,
                       f"{label} {_ns_text(value_ns, 'ms')} against a target of {_ns_text(bound_ns, 'ms')}")]


class TtftTarget(Rule):
    name = "ttft_target"
    formula = "ttft_ns <= floor(targets.ttft_s x 1e9)"

    def check(self, ctx: PlanContext) -> list[Check]:
        return _latency_check(self, "TTFT", ctx.estimate.ttft_ns, target_bound_ns(ctx.scenario.targets.ttft_s))

    def add_to_model(self, view: SolverView, lit: Any) -> None:
        bound = target_bound_ns(view.scenario.targets.ttft_s)
        bad = [view.x[c] for c in range(len(view.layouts)) if view.table.ttft_ns(c) > bound]
        if bad:
            view.model.add(sum(bad) == 0).only_enforce_if(lit)


class TpotTarget(Rule):
    name = "tpot_target"
    formula = "tpot_ns <= floor(targets.tpot_s x 1e9)"

    def check(self, ctx: PlanContext) -> list[Check]:
        return _latency_check(self, "TPOT", ctx.estimate.tpot_ns, target_bound_ns(ctx.scenario.targets.tpot_s))

    def add_to_model(self, view: SolverView, lit: Any) -> None:
        view.model.add(view.tpot_ns <= _solver_bound(target_bound_ns(view.scenario.targets.tpot_s))).only_enforce_if(lit)


class ThroughputTarget(Rule):
    """``S x OSL / request_latency >= target`` tokens/s, rewritten exactly as a bound on the latency. ``S``
    is the sequences in flight: the workload's ``concurrent_sequences``, or ``DP x batch`` when the
    objective chooses the batch (then one bound per candidate)."""

    name = "throughput_target"
    formula = "request_latency_ns <= floor(sequences_in_flight x output_tokens x 1e9 / targets.output_tokens_per_s)"

    @staticmethod
    def bound_ns(scenario: Scenario, sequences: int | None = None) -> int:
        w = scenario.workload
        served = w.concurrent_sequences if sequences is None else sequences
        value = served * w.output_tokens * NS_PER_S / scenario.targets.output_tokens_per_s
        return value.numerator // value.denominator

    def check(self, ctx: PlanContext) -> list[Check]:
        est, target = ctx.estimate, ctx.scenario.targets.output_tokens_per_s
        shown = f"{float(target):,.0f}" if target < 10**18 else "more than 1e18"
        return [make_check(self.name, self.formula, est.request_latency_ns, "<=", self.bound_ns(ctx.scenario, est.concurrent_sequences),
                           f"{est.output_tokens_per_s:,.0f} output tokens/s ({est.concurrent_sequences} sequences in flight) "
                           f"against a target of {shown}")]

    def add_to_model(self, view: SolverView, lit: Any) -> None:
        if not view.scenario.search.objective.chooses_batch:
            view.model.add(view.request_latency_ns <= _solver_bound(self.bound_ns(view.scenario))).only_enforce_if(lit)
            return
        for c, layout in enumerate(view.layouts):
            bound = _solver_bound(self.bound_ns(view.scenario, layout.dp * view.table.batch[c]))
            view.model.add(view.request_latency_ns <= bound).only_enforce_if([view.x[c], lit])


# The service targets: rules on the estimate rather than on what can run.
TARGET_RULES = (TtftTarget, TpotTarget, ThroughputTarget)


def build_rules(scenario: Scenario) -> tuple[Rule, ...]:
    """The rules that apply to ``scenario``, in the order the certificate lists them."""
    model, engine = scenario.model, scenario.engine
    sglang_moe = engine.name is EngineName.SGLANG and model.is_moe  # the dense FFN over SGLang's --tp-size
    rules: list[Rule] = [GpuProduct()]
    if model.is_moe:
        rules.append(MoeProduct())
    rules.append(Divisible("attention_heads_divisible", "num_attention_heads", "tp", model.num_attention_heads))
    if not model.is_mla:
        rules.append(KvHeadsDivisible(replicate=engine.name is not EngineName.MEGATRON))
    draft = engine.speculative.draft_config if engine.speculative is not None else None
    if draft is not None:
        rules.append(DraftHeadsDivisible(heads=draft.num_attention_heads, kv_heads=None if draft.is_mla else draft.kv_heads,
                                         replicate=engine.name is not EngineName.MEGATRON))
    if model.num_dense_layers:
        dense_field = "intermediate_size_mlp" if model.intermediate_size_mlp else "intermediate_size"
        rules.append(Divisible("dense_ffn_divisible", dense_field, "ffn_tp" if sglang_moe else "tp", model.dense_ffn_width))
    if model.is_moe:
        if engine.name is not EngineName.VLLM:  # vLLM spreads a remainder (fused_moe/layer.py determine_expert_map)
            # SGLang asserts (E + R) % ep_size == 0 with R redundant experts (eplb/expert_location.py)
            redundant = engine.num_redundant_experts
            rules.append(Divisible("experts_divisible", "num_experts + num_redundant_experts" if redundant else "num_experts",
                                   "ep", model.num_experts + redundant))
        rules.append(Divisible("moe_ffn_divisible", "moe_intermediate_size", "etp", model.expert_width))
        if model.shared_ffn_width:
            rules.append(Divisible("shared_ffn_divisible", "shared_expert_width", "ffn_tp" if sglang_moe else "tp", model.shared_ffn_width))
        block = scenario.workload.experts_dtype.block_size
        if block:
            rules.append(BlockAligned("moe_ffn_block_aligned", "moe_intermediate_size", "etp", model.expert_width, block))
        if model.interleave_moe_layer_step > 1:
            rules.append(InterleavedOneStage())
        if engine.moe_a2a_backend is MoeA2aBackend.DEEPEP:
            rules.append(DeepepWholeExperts())
        if engine.name is EngineName.VLLM:
            rules.append(VllmFolding(expert_parallel=engine.enable_expert_parallel))
        elif engine.name is EngineName.SGLANG:
            rules.append(SglangFolding())
        elif engine.name is EngineName.TENSORRT_LLM:
            rules.append(TrtllmFolding())
    block = scenario.workload.weight_dtype.block_size
    if block and model.num_dense_layers:
        rules.append(BlockAligned("dense_ffn_block_aligned", "intermediate_size", "ffn_tp" if sglang_moe else "tp",
                                  model.dense_ffn_width, block))
    rules.append(TpWithinNode())
    if speculative_pipeline_refusal(scenario):
        rules.append(SpeculativeOneStage())
    if engine.moe_dense_tp_size == 1 and model.is_moe:
        rules.append(MoeDenseTpOne())
    if engine.name is not EngineName.MEGATRON and scenario.cluster.num_nodes > 1:  # one node: every map runs
        rules.append(EnginePlacement())
    rules.append(LayerSplit())
    if not scenario.search.allow_uneven_layers:
        rules.append(EvenLayers())
    rules.append(MemoryCap(scenario))
    targets = scenario.targets
    rules += [rule() for rule in BALANCE_RULES if getattr(targets, rule.field) is not None]
    if targets.ttft_s is not None:
        rules.append(TtftTarget())
    if targets.tpot_s is not None:
        rules.append(TpotTarget())
    if targets.output_tokens_per_s is not None:
        rules.append(ThroughputTarget())
    return tuple(rules)
