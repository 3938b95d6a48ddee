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

from dataclasses import dataclass

from optimizer.model.parallel import Layout
from optimizer.inputs.scenario import EngineName


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
            return None, (f"it spreads {split} of the instance's {dp_i} DP ranks (TP x PP = {replica} GPUs each) over "
                          f"several nodes, and vLLM's multi-node data parallel runs whole DP ranks per node")
    blocks = node_blocks(slots)
    if blocks is None:
        return None, "it gives the nodes of an instance unequal or interleaved shares of its ranks"
    nnodes = len(blocks)
    if engine is EngineName.SGLANG and nnodes > 1 and layout.pp % nnodes and nnodes % layout.pp:
        return None, f"SGLang needs PP = {layout.pp} and the instance's {nnodes} nodes to divide one another"
    if engine is EngineName.TENSORRT_LLM and len({block.gpus for block in blocks}) > 1:
        return None, ("mpirun -x gives every node of an instance the same CUDA_VISIBLE_DEVICES, and its nodes use "
                      "different GPUs")
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
