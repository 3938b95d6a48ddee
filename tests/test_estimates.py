"""Issue 13, estimates that hold where the calibration has never been: each test here failed on the main
branch the issue was filed against."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.cost import grid, layer_works
from optimizer.loader import scenario_from_dict
from optimizer.parallel import Layout


def _scenario(model: str, engine: str = "vllm", gpus: int = 8) -> object:
    return scenario_from_dict({
        "name": "t", "cluster": {"gpu": "h100-sxm", "num_nodes": gpus // 8, "gpus_per_node": 8}, "model": model,
        "workload": {"concurrent_sequences": 64, "input_tokens": 2048, "output_tokens": 512}, "engine": {"name": engine}})


@pytest.mark.parametrize("model", ["Mixtral-8x22B-v0.1", "Qwen3-30B-A3B", "DeepSeek-V3"])
def test_the_moe_tensor_parallel_all_reduce_carries_each_token_once(model: str) -> None:
    """vLLM's and SGLang's fused MoE sum a token's top-k expert outputs before one all-reduce of tokens x
    hidden over the group (vLLM FusedMoE.forward: tensor_model_parallel_all_reduce after the top-k sum):
    the bytes do not grow with num_experts_per_tok."""
    sc = _scenario(model, gpus=16 if model == "DeepSeek-V3" else 8)
    tp = sc.cluster.num_gpus
    g = grid(sc, (Layout(tp=tp, pp=1, dp=1, ep=1, etp=tp, edp=1),))
    tokens = 64
    works = layer_works(scenario=sc, g=g, tokens=np.ones(1) * tokens, seqs=np.ones(1) * tokens, context=2048,
                        prefill=False, dense=False)
    assert float(np.asarray(works["etp_allreduce"].bytes)[0]) == tokens * sc.model.hidden_size * 2  # BF16 activations
    # with attention DP (TP 1 x DP 8, experts over ETP 8) the group reduces the 8 ranks' gathered tokens, once each
    g = grid(sc, (Layout(tp=1, pp=1, dp=tp, ep=1, etp=tp, edp=1),))
    works = layer_works(scenario=sc, g=g, tokens=np.ones(1) * 8, seqs=np.ones(1) * 8, context=2048, prefill=False, dense=False)
    assert float(np.asarray(works["etp_allreduce"].bytes)[0]) == 8 * tp * sc.model.hidden_size * 2


def test_the_busiest_ep_rank_carries_its_ceil_share_of_the_experts() -> None:
    """Issue 13 item 8: vLLM runs E experts over an EP that does not divide them; the busiest rank holds
    ceil(E / EP) and gets that share of the routed tokens (uniform routing)."""
    sc = scenario_from_dict({
        "name": "t", "cluster": {"gpu": "h100-sxm", "num_nodes": 1, "gpus_per_node": 8},
        "model": {"name": "Mixtral-8x7B-v0.1", "num_experts": 6},
        "workload": {"concurrent_sequences": 64, "input_tokens": 2048, "output_tokens": 512},
        "engine": {"name": "vllm", "enable_expert_parallel": True}})
    g = grid(sc, (Layout(tp=4, pp=1, dp=1, ep=4, etp=1, edp=1),))
    works = layer_works(scenario=sc, g=g, tokens=np.ones(1) * 60, seqs=np.ones(1) * 60, context=2048, prefill=False, dense=False)
    h, width = sc.model.hidden_size, sc.model.expert_width
    routed = 60 * 2 * 2 / 6  # 60 tokens x top-2, the busiest of EP = 4 ranks holds ceil(6 / 4) = 2 of 6 experts
    assert float(np.asarray(works["experts"].flops)[0]) == pytest.approx(2.0 * routed * 3 * h * width * sc.workload.routing_imbalance)
