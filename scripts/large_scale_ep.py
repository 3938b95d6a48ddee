"""The large-scale expert-parallel model (issue 13 item 3) against one public measurement: SGLang serving
DeepSeek-V3 on H100 nodes with DeepEP, two-batch overlap and EPLB (lmsys.org/blog/2025-05-05-large-scale-ep:
"52.3k input tokens per second ... per node for 2000-token input sequences", prefill on 4 nodes, EP 32).

    python scripts/large_scale_ep.py

Prints the predicted prefill throughput per node, and its error against the measurement, for the tool's old
EP model (the engines' plain all-to-all: every top-k copy in BF16, no overlap, no redundant experts) and the
new one (the shipped scenario ``deepseek-v3-32xh100-sglang-deepep``: DeepEP normal mode with per-node
deduplication and FP8 dispatch, two-batch overlap, 32 redundant experts), each beside its speed of light.

Assumption, not from the blog: each prefill GPU runs steps of 16,000 tokens (8 prompts of 2,000); the
blog's per-GPU step size is not restated here. Nothing is fitted to this figure: it is a check.

The blog's figures (this one, its 4,096-token prefill and its EP 72 decode) are rows of
``calibration/data/measurements_large_ep.csv``; ``large_ep_rows`` reads them and ``predict_large_ep`` predicts
each from the shipped scenario under the row's conditions (``scripts/validate_cost_model.py``: the EP >= 16
regime).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optimizer.inputs.loader import load_scenario  # noqa: E402
from optimizer.model.cost import batched_prefill, integer_costs  # noqa: E402
from optimizer.model.memory import layer_kinds  # noqa: E402
from optimizer.model.parallel import Layout  # noqa: E402

MEASURED_INPUT_TOKENS_PER_S_PER_NODE = 52_300  # the blog's headline, 2000-token inputs
STEP_TOKENS = 16_000  # per GPU (assumption, see the docstring)
ROOT = Path(__file__).resolve().parent.parent
MEASUREMENTS = ROOT / "calibration" / "data" / "measurements_large_ep.csv"
SCENARIO = "deepseek-v3-32xh100-sglang-deepep"


def prefill_tokens_per_s_per_node(scenario, *, step_tokens: int = STEP_TOKENS, ep: int = 32) -> tuple[float, float]:
    """(predicted, speed of light) input tokens/s per node for TP 1 x DP ``ep`` attention, EP ``ep`` experts,
    each GPU running steps of ``step_tokens`` tokens (``step_tokens / ISL`` prompts)."""
    layout = Layout(tp=1, pp=1, dp=ep, ep=ep, etp=1, edp=1)
    batch = step_tokens // scenario.workload.input_tokens
    scenario = scenario.model_copy(update={"engine": scenario.engine.model_copy(update={"max_num_batched_tokens": step_tokens})})
    table = integer_costs(scenario=scenario, layouts=(layout,), batches=(batch,))
    kinds = layer_kinds(model=scenario.model, layers_per_stage=(scenario.model.num_hidden_layers,))
    step_s = batched_prefill(scenario=scenario, table=table, index=0, kinds=kinds).batched_prefill_ns / 1e9
    gpn = scenario.cluster.gpus_per_node
    return gpn * step_tokens / step_s, gpn * step_tokens / _sol_prefill_s(scenario, layout, batch, step_tokens)


def decode_step_s(scenario, *, batch: int, ep: int) -> float:
    """One decode step (s) of ``batch`` sequences per GPU at TP 1 x DP ``ep`` attention, EP ``ep`` experts, one
    micro-batch, every sequence at the scenario's decode context (``ISL + ceil(OSL / 2)``, ``integer_costs``):
    every layer, embedding, LM head and step overhead (``CostTable.phase_total_ns``), no prefill share (the
    decode nodes of a disaggregated deployment run no prefill)."""
    layout = Layout(tp=1, pp=1, dp=ep, ep=ep, etp=1, edp=1)
    table = integer_costs(scenario=scenario, layouts=(layout,), batches=(batch,))
    assert table.microbatches[0] == 1
    return table.phase_total_ns(table.decode, 0) / 1e9


@dataclass(frozen=True)
class LargeEpRow:
    """One throughput of ``MEASUREMENTS``, as the held-out tables read rows: ``label`` and ``measured_s``, the
    step time the throughput implies (``step_tokens_per_gpu`` tokens per GPU, ``gpus_per_node`` GPUs)."""

    source_url: str
    quote: str
    model: str
    gpu: str
    engine: str
    ep: int
    nodes: int
    input_len: int
    kind: str
    tokens_per_s_per_node: float
    step_tokens_per_gpu: int
    assumption: str
    expert_distribution: str = "default"  # or "simulated perfect EPLB" (the blog's balanced-placement column)
    gpus_per_node: int = 8

    @property
    def measured_s(self) -> float:
        return self.step_tokens_per_gpu * self.gpus_per_node / self.tokens_per_s_per_node

    @property
    def label(self) -> str:
        per = "tokens" if self.kind == "prefill" else "sequences"
        return (f"{self.model} {self.engine} {self.kind} EP{self.ep} on {self.nodes}x{self.gpus_per_node} {self.gpu}, "
                f"ISL {self.input_len}, {self.step_tokens_per_gpu} {per}/GPU step ({self.tokens_per_s_per_node:,.0f} tok/s/node"
                + ("" if self.expert_distribution == "default" else f", {self.expert_distribution}") + ")")


EXPERT_DISTRIBUTIONS = ("default", "simulated perfect EPLB")  # the blog's two expert placements


def large_ep_rows(path: Path = MEASUREMENTS) -> tuple[LargeEpRow, ...]:
    """The rows of ``measurements_large_ep.csv`` (comment lines start with ``#``).

    Raises:
        ValueError: a row's ``expert_distribution`` is not one of ``EXPERT_DISTRIBUTIONS``.
    """
    with open(path, newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(line for line in f if not line.startswith("#")))
    for n, r in enumerate(records, start=1):
        if r["expert_distribution"] not in EXPERT_DISTRIBUTIONS:
            raise ValueError(f"{path}: data row {n}: expert_distribution {r['expert_distribution']!r} is not one of "
                             f"{', '.join(EXPERT_DISTRIBUTIONS)}")
    return tuple(LargeEpRow(source_url=r["source_url"], quote=r["quote"], model=r["model"], gpu=r["gpu"],
                            engine=r["engine"], ep=int(r["ep"]), nodes=int(r["nodes"]), input_len=int(r["input_len"]),
                            kind=r["kind"], tokens_per_s_per_node=float(r["tokens_per_s_per_node"]),
                            step_tokens_per_gpu=int(r["step_tokens_per_gpu"]), assumption=r["assumption"],
                            expert_distribution=r["expert_distribution"])
                 for r in records)


def row_scenario(row: LargeEpRow):
    """The shipped scenario under the row's conditions: its nodes, its input length, the blog's data-parallel
    dense FFN and LM head (``--moe-dense-tp-size 1``, ``--enable-dp-lm-head``: "Users can enable this
    feature by setting `--moe-dense-tp-size=1`"; "To enhance scalability and efficiency, we adopt Data
    Parallelism (DP)" for the LM head), and for decode DeepEP's low-latency mode (what auto resolves to
    for decode) with the KV length the row states as the decode context (ISL + ceil(OSL / 2) with OSL 1:
    ``input_len + 1``, one token longer than the row's)."""
    base = load_scenario(SCENARIO)
    assert (base.cluster.gpu.name, base.engine.name.value) == (row.gpu, row.engine), row
    cluster = base.cluster.model_copy(update={"num_nodes": row.nodes})
    workload = base.workload.model_copy(update={"input_tokens": row.input_len, "output_tokens": 1 if row.kind == "decode" else base.workload.output_tokens})
    engine = base.engine.model_copy(update={"moe_dense_tp_size": 1, "enable_dp_lm_head": True,
                                            **({"deepep_mode": "low_latency"} if row.kind == "decode" else {})})
    return base.model_copy(update={"cluster": cluster, "workload": workload, "engine": engine})


def predict_large_ep(row: LargeEpRow) -> float:
    """The step time (s) the cost model predicts for ``row`` with the shipped calibration (nothing fitted to it)."""
    scenario = row_scenario(row)
    assert row.nodes * scenario.cluster.gpus_per_node == row.ep  # one DP-attention rank and one EP rank per GPU
    if row.kind == "prefill":
        tokens_per_s, _ = prefill_tokens_per_s_per_node(scenario, step_tokens=row.step_tokens_per_gpu, ep=row.ep)
        return row.step_tokens_per_gpu * scenario.cluster.gpus_per_node / tokens_per_s
    return decode_step_s(scenario, batch=row.step_tokens_per_gpu, ep=row.ep)


def _sol_prefill_s(scenario, layout, batch, step_tokens: int = STEP_TOKENS) -> float:
    """Speed of light of one step of ``step_tokens`` tokens: every operator's datasheet time, overlap included."""
    import numpy as np

    from optimizer.model.calibration import shipped_calibration
    from optimizer.model.cost import grid, layer_time

    cal = shipped_calibration()
    stack = cal.stack_for(scenario.engine.name.value, scenario.engine.calibration_stack)
    g = grid(scenario, (layout,), (batch,))
    tokens = np.ones(1) * step_tokens
    total = 0.0
    for dense, count in ((True, scenario.model.num_dense_layers), (False, scenario.model.num_moe_layers)):
        t = layer_time(scenario=scenario, g=g, tokens=tokens, seqs=tokens / scenario.workload.input_tokens,
                       context=scenario.workload.input_tokens, prefill=True, dense=dense,
                       cal=cal.for_gpu(scenario.cluster.gpu.name, stack))
        total += count * float(sum(v[0] for v in t.sol.values()))
    return total


def main() -> None:
    new = load_scenario(SCENARIO)
    old_engine = new.engine.model_copy(update={"moe_a2a_backend": "none", "enable_two_batch_overlap": False,
                                               "num_redundant_experts": 0})
    old = new.model_copy(update={"engine": old_engine})
    print(f"DeepSeek-V3 prefill on {new.cluster.gpu.name}, TP 1 x DP 32, EP 32, {STEP_TOKENS} tokens per GPU step; "
          f"measured {MEASURED_INPUT_TOKENS_PER_S_PER_NODE:,} input tokens/s per node")
    for label, scenario in (("old EP model", old), ("new EP model", new)):
        predicted, sol = prefill_tokens_per_s_per_node(scenario)
        error = (predicted - MEASURED_INPUT_TOKENS_PER_S_PER_NODE) / MEASURED_INPUT_TOKENS_PER_S_PER_NODE
        print(f"  {label}: {predicted:9,.0f} tokens/s per node ({error:+.0%} vs measured); speed of light {sol:9,.0f} "
              f"({'below' if sol < MEASURED_INPUT_TOKENS_PER_S_PER_NODE else 'above'} the measurement)")
    print(f"\nEvery row of {MEASUREMENTS.relative_to(ROOT)} (the shipped scenario under each row's conditions, shipped calibration; step time the throughput implies):")
    for row in large_ep_rows():
        predicted = predict_large_ep(row)
        print(f"  {row.label}: measured {row.measured_s * 1e3:,.1f} ms, predicted {predicted * 1e3:,.1f} ms "
              f"({predicted / row.measured_s - 1:+.1%}); {row.tokens_per_s_per_node * row.measured_s / predicted:,.0f} tok/s/node predicted")


if __name__ == "__main__":
    main()
