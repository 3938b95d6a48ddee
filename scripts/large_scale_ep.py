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
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optimizer.inputs.loader import load_scenario  # noqa: E402
from optimizer.model.cost import batched_prefill, integer_costs  # noqa: E402
from optimizer.model.memory import layer_kinds  # noqa: E402
from optimizer.model.parallel import Layout  # noqa: E402

MEASURED_INPUT_TOKENS_PER_S_PER_NODE = 52_300  # the blog's headline, 2000-token inputs
STEP_TOKENS = 16_000  # per GPU (assumption, see the docstring)


def prefill_tokens_per_s_per_node(scenario) -> tuple[float, float]:
    """(predicted, speed of light) input tokens/s per node for TP 1 x DP 32 attention, EP 32 experts."""
    layout = Layout(tp=1, pp=1, dp=32, ep=32, etp=1, edp=1)
    batch = STEP_TOKENS // scenario.workload.input_tokens
    scenario = scenario.model_copy(update={"engine": scenario.engine.model_copy(update={"max_num_batched_tokens": STEP_TOKENS})})
    table = integer_costs(scenario=scenario, layouts=(layout,), batches=(batch,))
    kinds = layer_kinds(model=scenario.model, layers_per_stage=(scenario.model.num_hidden_layers,))
    step_s = batched_prefill(scenario=scenario, table=table, index=0, kinds=kinds).batched_prefill_ns / 1e9
    gpn = scenario.cluster.gpus_per_node
    return gpn * STEP_TOKENS / step_s, gpn * STEP_TOKENS / _sol_prefill_s(scenario, layout, batch)


def _sol_prefill_s(scenario, layout, batch) -> float:
    """Speed of light of one step of ``STEP_TOKENS`` tokens: every operator's datasheet time, overlap included."""
    import numpy as np

    from optimizer.model.calibration import shipped_calibration
    from optimizer.model.cost import grid, layer_time

    cal = shipped_calibration()
    stack = cal.stack_for(scenario.engine.name.value, scenario.engine.calibration_stack)
    g = grid(scenario, (layout,), (batch,))
    tokens = np.ones(1) * STEP_TOKENS
    total = 0.0
    for dense, count in ((True, scenario.model.num_dense_layers), (False, scenario.model.num_moe_layers)):
        t = layer_time(scenario=scenario, g=g, tokens=tokens, seqs=tokens / scenario.workload.input_tokens,
                       context=scenario.workload.input_tokens, prefill=True, dense=dense,
                       cal=cal.for_gpu(scenario.cluster.gpu.name, stack))
        total += count * float(sum(v[0] for v in t.sol.values()))
    return total


def main() -> None:
    new = load_scenario("deepseek-v3-32xh100-sglang-deepep")
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


if __name__ == "__main__":
    main()
