"""Where the engines put an instance's ranks (``optimizer/model/placement.py``): the search's verdict from
whole runs of ranks (``rank_map_refusal``, what ``rules.EnginePlacement`` asks for every layout of a grid)
against the launch's rank-by-rank placement (``rank_map_blocks``), on every layout of small clusters and on
slices of large ones; and the shapes each engine refuses, with the reason."""

from __future__ import annotations

import pytest

from optimizer.inputs.scenario import EngineName
from optimizer.model.parallel import Layout, divisors
from optimizer.model.placement import rank_map_blocks, rank_map_refusal

ENGINES = (EngineName.VLLM, EngineName.SGLANG, EngineName.TENSORRT_LLM)


def _shapes(num_gpus: int):
    """(TP, PP, DP, instances) of every attention layout of ``num_gpus`` and every instance count dividing DP."""
    for tp in divisors(num_gpus):
        for pp in divisors(num_gpus // tp):
            dp = num_gpus // (tp * pp)
            for n in divisors(dp):
                yield tp, pp, dp, n


def _agree(engine: EngineName, tp: int, pp: int, dp: int, n: int, gpn: int) -> bool:
    blocks, reason = rank_map_blocks(engine, Layout(tp=tp, pp=pp, dp=dp), gpus_per_node=gpn, n_inst=n, dp_i=dp // n)
    fast = rank_map_refusal(engine, tp=tp, pp=pp, dp_i=dp // n, instances=n, gpus_per_node=gpn)
    return (blocks is None) == (fast is not None) and (blocks is not None or bool(reason))


@pytest.mark.parametrize("num_gpus", range(2, 41))
def test_run_verdict_equals_the_rank_by_rank_launch_on_every_small_cluster(num_gpus):
    """Every node size that divides the cluster, every shape, every engine: one verdict."""
    bad = [(e.value, gpn, shape) for gpn in divisors(num_gpus) for shape in _shapes(num_gpus) for e in ENGINES
           if not _agree(e, *shape, gpn)]
    assert not bad, bad[:5]


@pytest.mark.parametrize(("num_gpus", "gpn"), [(240, 12), (252, 6), (720, 72), (128, 8)])
def test_run_verdict_equals_the_launch_on_larger_clusters(num_gpus, gpn):
    """Node sizes of real machines (6, 8, 12, 72 GPUs) and stage counts past the runs' period, where the
    walk leaves whole periods out."""
    shapes = [s for s in _shapes(num_gpus) if s[1] > 1 or s[3] > 1]
    bad = [(e.value, s) for s in shapes for e in ENGINES if not _agree(e, *s, gpn)]
    assert not bad, bad[:5]


def test_the_issue_shape_is_refused_by_vllm_only():
    """Issue 13 item 7: TP 1 PP 2 DP 8 in one instance on 2 x 8 GPUs. The rank map gives each DP rank a stage on
    each node; vLLM runs whole DP ranks per node; SGLang's pp-major order runs it (stage s on node s), and so
    does TensorRT-LLM's (the same GPUs 0-7 on both nodes)."""
    why = rank_map_refusal(EngineName.VLLM, tp=1, pp=2, dp_i=8, instances=1, gpus_per_node=8)
    assert why and "spreads 8 of the instance's 8 DP ranks" in why
    assert rank_map_refusal(EngineName.SGLANG, tp=1, pp=2, dp_i=8, instances=1, gpus_per_node=8) is None
    assert rank_map_refusal(EngineName.TENSORRT_LLM, tp=1, pp=2, dp_i=8, instances=1, gpus_per_node=8) is None
    # two instances of TP 2 x DP 4, each one node: every engine runs them
    assert all(rank_map_refusal(e, tp=2, pp=1, dp_i=4, instances=2, gpus_per_node=8) is None for e in ENGINES)


def test_sglang_and_trtllm_refusals_say_why():
    # one instance of PP 2 x 6 GPUs per stage on nodes of 4: 3 nodes, which PP = 2 does not divide
    assert "PP = 2 and the instance's 3 nodes" in rank_map_refusal(EngineName.SGLANG, tp=1, pp=2, dp_i=6, instances=1,
                                                                     gpus_per_node=4)
    # 6 instances of PP 2 x 1 GPU on nodes of 4: instance 2 holds GPU 2 of node 0 and GPU 0 of node 1
    assert "CUDA_VISIBLE_DEVICES" in rank_map_refusal(EngineName.TENSORRT_LLM, tp=1, pp=2, dp_i=1, instances=6,
                                                      gpus_per_node=4)


def test_grid_verdicts_on_65536_gpus_equal_the_scalar_ones():
    """holds_grid's second key path (sizes too large for one int64 key) on the 12,597 layouts of 65,536 GPUs
    under vLLM, against the scalar holds; a few layouts also against the rank-by-rank launch."""
    from conftest import make_scenario

    from optimizer.model.parallel import layout_grid
    from optimizer.search.rules import EnginePlacement, SizeArrays

    s = make_scenario(cluster={"num_nodes": 8192, "gpus_per_node": 8},
                      engine={"name": "vllm", "enable_expert_parallel": True})
    grid = layout_grid(num_gpus=65536, is_moe=True)
    rule = EnginePlacement()
    verdicts = rule.holds_grid(s, SizeArrays.of(grid))
    assert [rule.holds(s, lay) for lay in grid] == verdicts.tolist()
    assert 0 < verdicts.sum() < len(grid)
    for lay in (Layout(tp=8, pp=2, dp=4096, ep=8, etp=1, edp=4096), Layout(tp=1, pp=2, dp=32768, ep=8, etp=1, edp=4096),
                Layout(tp=2, pp=1, dp=32768, ep=16, etp=1, edp=4096), Layout(tp=4, pp=16, dp=1024, ep=4096, etp=1, edp=1)):
        n = lay.edp
        blocks, _ = rank_map_blocks(EngineName.VLLM, lay, gpus_per_node=8, n_inst=n, dp_i=lay.dp // n)
        assert rule.holds(s, lay) == (blocks is not None), lay
