"""Where an engine puts an instance's ranks, and whether that is the plan's rank map.

The plan's rank map (``parallel.rank_info``: order tp-dp-pp, node = rank // gpus_per_node) is what the
cost model prices: it decides which collectives cross nodes (``cost.grid``). An engine starts each of
its instances' ranks in its own order on the GPUs it is given, and it can be given the rank map's GPUs
only where its multi-node launcher accepts them:

- vLLM 0.33 runs each DP rank as its own engine on TP x PP consecutive devices (rank = tp + TP x pp); an
  instance over several nodes with several DP ranks runs whole DP ranks per node
  (docs/serving/data_parallel_deployment.md, "Internal Load Balancing": ``--data-parallel-size-local``
  per node).
- SGLang 0.5.23's world is pp-major with the attention-DP ranks inside its TP group (rank = tp + TP x
  (dp + dp_i x pp)); each node gets world / nnodes consecutive ranks, whole pipeline stages or an equal
  share of one (``entrypoints/engine.py`` ``_calculate_rank_ranges``: PP and nnodes divide one another).
- TensorRT-LLM 1.2 orders ranks like SGLang (``mapping.py``: tp fastest, then pp); ``mpirun -H host:slots``
  gives each node consecutive ranks, and ``-x CUDA_VISIBLE_DEVICES`` the same GPUs on every node.

Every engine gives each node one run of ``world / nnodes`` consecutive ranks. ``instance_blocks`` says
whether a given (node, GPU) per engine-ordered rank is such a layout; ``follows_rank_map`` whether every
instance of a layout can run on its rank-map GPUs (``outputs/launch.py`` then launches exactly the plan).
This module is the rank-by-rank account; ``search/rules.py`` ``EnginePlacement`` decides the same
question per layout by whole runs, and a test keeps the two equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from optimizer.model.parallel import Layout
from optimizer.inputs.scenario import EngineName


UNEQUAL = "it gives the nodes of an instance unequal or interleaved shares of its ranks"
TRTLLM_GPUS = ("mpirun -x gives every node of an instance the same CUDA_VISIBLE_DEVICES, and its nodes use "
               "different GPUs")


def vllm_split_refusal(*, split: int, dp_i: int, replica: int) -> str:
    """vLLM's refusal of DP ranks that span nodes (``split`` of the instance's ``dp_i``)."""
    return (f"it spreads {split} of the instance's {dp_i} DP ranks (TP x PP = {replica} GPUs each) over "
            f"several nodes, and vLLM's multi-node data parallel runs whole DP ranks per node")


def sglang_nodes_refusal(*, pp: int, nodes: int) -> str:
    """SGLang's refusal of an instance whose node count and PP do not divide one another."""
    return f"SGLang needs PP = {pp} and the instance's {nodes} nodes to divide one another"


@dataclass(frozen=True)
class Block:
    """One node's share of an instance: node-local ``gpus`` in the engine's rank order."""

    node: int
    gpus: tuple[int, ...]


def engine_order(engine: EngineName, layout: Layout, dp_i: int) -> list[tuple[int, int, int]]:
    """(DP rank in the instance, pp, tp) of each engine-local rank, in the engine's rank order. vLLM runs
    each DP rank as its own engine on consecutive devices (rank = tp + TP x pp); SGLang's and TensorRT-LLM's
    world is pp-major with the attention-DP ranks inside the TP group (rank = tp + TP x (dp + dp_i x pp))."""
    tp, pp = range(layout.tp), range(layout.pp)
    if engine is EngineName.VLLM:
        return [(d, p, t) for d in range(dp_i) for p in pp for t in tp]
    return [(d, p, t) for p in pp for d in range(dp_i) for t in tp]


def plan_rank(layout: Layout, *, instance: int, dp_i: int, coord: tuple[int, int, int]) -> int:
    """The rank map's global rank of (DP rank ``d`` in ``instance``, pp ``p``, tp ``t``) = ``coord``:
    ``t + TP x (instance x dp_i + d + DP x p)`` (order tp-dp-pp, ``parallel.rank_info``)."""
    d, p, t = coord
    return t + layout.tp * (instance * dp_i + d + layout.dp * p)


def node_blocks(slots: list[tuple[int, int]]) -> tuple[Block, ...] | None:
    """Group (node, gpu) slots, in engine rank order, into one block per node; None unless every node
    holds one run of equal length (engines give each node world_size / nnodes consecutive ranks)."""
    blocks: list[tuple[int, list[int]]] = []
    for node, gpu in slots:
        if blocks and blocks[-1][0] == node:
            blocks[-1][1].append(gpu)
        else:
            blocks.append((node, [gpu]))
    nodes = [node for node, _ in blocks]
    if len(set(nodes)) != len(nodes) or len({len(g) for _, g in blocks}) != 1:
        return None
    return tuple(Block(node=node, gpus=tuple(g)) for node, g in blocks)


def instance_blocks(engine: EngineName, slots: list[tuple[int, int]], *, layout: Layout,
                    dp_i: int) -> tuple[tuple[Block, ...] | None, str | None]:
    """The per-node blocks of an instance whose engine-ordered ranks sit on ``slots`` (node, GPU), or
    None and why the engine cannot run that (the module docstring gives each engine's rule and source)."""
    replica = layout.tp * layout.pp
    if engine is EngineName.VLLM and dp_i > 1 and len({node for node, _ in slots}) > 1:
        split = sum(1 for d in range(dp_i) if len({node for node, _ in slots[d * replica:(d + 1) * replica]}) > 1)
        if split:
            return None, vllm_split_refusal(split=split, dp_i=dp_i, replica=replica)
    blocks = node_blocks(slots)
    if blocks is None:
        return None, UNEQUAL
    nnodes = len(blocks)
    if engine is EngineName.SGLANG and nnodes > 1 and layout.pp % nnodes and nnodes % layout.pp:
        return None, sglang_nodes_refusal(pp=layout.pp, nodes=nnodes)
    if engine is EngineName.TENSORRT_LLM and len({block.gpus for block in blocks}) > 1:
        return None, TRTLLM_GPUS
    return blocks, None


def rank_map_blocks(engine: EngineName, layout: Layout, *, gpus_per_node: int, n_inst: int,
                    dp_i: int) -> tuple[tuple[tuple[Block, ...], ...] | None, str | None]:
    """Each instance's blocks on the rank map's GPUs (instance i: DP ranks ``i x dp_i`` to ``(i + 1) x
    dp_i - 1``), or None and why the engine cannot run some instance there (the first reason found)."""
    order = engine_order(engine, layout, dp_i)
    placed = []
    for i in range(n_inst):
        ranks = [plan_rank(layout, instance=i, dp_i=dp_i, coord=c) for c in order]
        blocks, reason = instance_blocks(engine, [divmod(r, gpus_per_node) for r in ranks], layout=layout, dp_i=dp_i)
        if blocks is None:
            return None, reason
        placed.append(blocks)
    return tuple(placed), None


def _node_shares(*, start: int, run: int, stride: int, runs: int, gpus_per_node: int) -> list[list]:
    """[node, ranks, [(first local GPU, end), ...]] per node that ``runs`` runs of ``run`` consecutive
    ranks, the k-th from ``start + k x stride``, touch, in order (the runs increase: one stretch per node).
    Stops early, returning the list so far, once two nodes hold different numbers of ranks."""
    g = gpus_per_node
    nodes: list[list] = []
    for k in range(runs):
        lo = start + k * stride
        end = lo + run
        while lo < end:
            node = lo // g
            hi = min(end, (node + 1) * g)
            a, b = lo - node * g, hi - node * g
            if nodes and nodes[-1][0] == node:
                nodes[-1][1] += hi - lo
                spans = nodes[-1][2]
                if spans[-1][1] == a:
                    spans[-1] = (spans[-1][0], b)
                else:
                    spans.append((a, b))
            else:
                if len(nodes) >= 2 and nodes[-1][1] != nodes[0][1]:
                    return nodes
                nodes.append([node, hi - lo, [(a, b)]])
            lo = hi
    return nodes


def _monotone_refusal(engine: EngineName, *, start: int, run: int, stride: int, runs: int, pp: int,
                      gpus_per_node: int) -> str | None:
    """Why ``runs`` runs of ``run`` consecutive ranks, the k-th starting at ``start + k x stride``
    (increasing: each node's ranks come in one stretch of the engine's order), are no layout the engine
    runs, or None: every node of the instance must hold the same number of ranks, for SGLang the node
    count and PP divide one another, for TensorRT-LLM every node uses the same node-local GPUs. Walks
    whole node segments, not ranks.

    The runs repeat every ``period = lcm(stride, G) / stride`` runs, shifted by whole nodes, so a node's
    share depends only on where it sits in that pattern, except at the two ends: past ``2 x period + 2``
    runs, whole periods are left out of the walk (each adds the same shares) and counted back into the
    node count."""
    g = gpus_per_node
    period = g // math.gcd(stride, g)
    skipped = 0
    if runs > 3 * period + 2:
        kept = 2 * period + 2 + (runs - 2 * period - 2) % period
        skipped, runs = (runs - kept) // period, kept
    nodes = _node_shares(start=start, run=run, stride=stride, runs=runs, gpus_per_node=g)
    if len({ranks for _, ranks, _ in nodes}) != 1:
        return UNEQUAL
    count = len(nodes)
    if skipped:  # each period adds the nodes one more period of runs touches
        more = _node_shares(start=start, run=run, stride=stride, runs=runs + period, gpus_per_node=g)
        count += skipped * (len(more) - len(nodes))
    if engine is EngineName.SGLANG and count > 1 and pp % count and count % pp:
        return sglang_nodes_refusal(pp=pp, nodes=count)
    if engine is EngineName.TENSORRT_LLM and len({tuple(spans) for _, _, spans in nodes}) > 1:
        return TRTLLM_GPUS
    return None


def _vllm_dp_ranks_refusal(*, start: int, tp: int, pp: int, dp_i: int, stride: int, gpus_per_node: int) -> str | None:
    """vLLM with several DP ranks in an instance over several nodes: each DP rank (its ranks increase with
    pp, so its first and last rank decide) inside one node, the DP ranks of a node consecutive, and every
    node the same number of them; else why not."""
    g = gpus_per_node
    counts: list[list[int]] = []  # [node, DP ranks]
    split = 0
    for d in range(dp_i):
        first = start + tp * d
        node = first // g
        if (first + stride * (pp - 1) + tp - 1) // g != node:
            split += 1
        elif counts and counts[-1][0] == node:
            counts[-1][1] += 1
        else:
            counts.append([node, 1])
    if split:
        return vllm_split_refusal(split=split, dp_i=dp_i, replica=tp * pp)
    if len({n for n, _ in counts}) == len(counts) and len({c for _, c in counts}) == 1:
        return None
    return UNEQUAL


@lru_cache(maxsize=65536)
def rank_map_refusal(engine: EngineName, *, tp: int, pp: int, dp_i: int, instances: int, gpus_per_node: int) -> str | None:
    """Why ``engine`` cannot run some instance of a layout on its rank-map GPUs, or None when it runs
    every one there: the same verdict as ``rank_map_blocks`` (None there iff a reason here), computed from
    whole runs of ranks instead of rank by rank, so the search can ask it of grids of 65,536 GPUs.

    Instance i holds, in every stage p, the ``A = TP x dp_i`` consecutive ranks from ``B x p + A x i``
    (``B = A x instances``, a stage). Instances whose offset ``A x i`` differs by a multiple of a node look
    alike (their nodes shift by a constant), so at most ``gpus_per_node / gcd(A, gpus_per_node)`` are
    walked. Closed forms first: when A is a multiple of a node every run is whole nodes, and only vLLM with
    several DP ranks and PP > 1 (each DP rank spans stages on other nodes) or a TP that does not divide a
    node fails; when A divides a node and a stage is whole nodes, or divides one, every node holds as many
    of an instance's runs as the next, at the same node-local GPUs. Cached per (engine, TP, PP, dp_i,
    instances, GPUs per node)."""
    g = gpus_per_node
    a = tp * dp_i
    b = a * instances
    if b * pp <= g:  # one node holds everything
        return None
    vllm_dp = engine is EngineName.VLLM and dp_i > 1
    spanning = vllm_split_refusal(split=dp_i, dp_i=dp_i, replica=tp * pp)
    if vllm_dp and pp > 1 and b >= g:  # a DP rank's stages lie a stage (>= a node) apart
        return spanning
    if a % g == 0:  # whole nodes per run
        if not vllm_dp or (pp == 1 and g % tp == 0):
            return None
        return _vllm_dp_ranks_refusal(start=0, tp=tp, pp=pp, dp_i=dp_i, stride=b, gpus_per_node=g)
    if g % a == 0 and b % g == 0:  # each run inside one node, the stages on distinct nodes
        return None
    if g % a == 0 and g % b == 0:  # G / B whole stages per node: every node holds G / B runs of each instance
        return spanning if vllm_dp else None
    for i in range(min(instances, g // math.gcd(a, g))):
        start = a * i
        if vllm_dp:
            if start // g == (b * (pp - 1) + start + a - 1) // g:  # the instance inside one node
                continue
            why = _vllm_dp_ranks_refusal(start=start, tp=tp, pp=pp, dp_i=dp_i, stride=b, gpus_per_node=g)
        else:
            run = tp if engine is EngineName.VLLM else a
            why = _monotone_refusal(engine, start=start, run=run, stride=b, runs=pp, pp=pp, gpus_per_node=g)
        if why:
            return why
    return None
