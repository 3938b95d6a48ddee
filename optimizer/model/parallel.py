"""Parallel layouts, the candidate grid, the plan and the rank map.

Notation follows Megatron-Core's MoE parallel folding (Megatron-Core MoE README, "MoE Parallel Folding"):
attention and dense layers use ``TP x PP x DP = N``; MoE layers use ``ETP x EP x EDP x PP = N`` with the
same PP, so inside a pipeline stage ``ETP x EP x EDP = TP x DP``.

Rank order is Megatron's default ``tp-dp-pp`` for attention (TP fastest) and ``etp-ep-edp`` inside each
stage for experts, so TP groups and expert groups are contiguous blocks of global ranks, and the node of a
rank is ``rank // gpus_per_node``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache, lru_cache

from optimizer.units import ceil_div


@cache
def divisors(n: int) -> tuple[int, ...]:
    """All positive divisors of ``n`` in increasing order."""
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return tuple(small + large[::-1])


@dataclass(frozen=True, order=True)
class Layout:
    """Parallel sizes. ``edp`` is the expert data-parallel size: how many copies of each expert exist
    per pipeline stage. For a dense model ``ep = 1, etp = tp, edp = dp`` (the FFN is sharded like TP)."""

    tp: int
    pp: int
    dp: int
    ep: int = 1
    etp: int = 1
    edp: int = 1

    @property
    def gpus(self) -> int:
        """GPUs the attention folding uses: ``tp x pp x dp``."""
        return self.tp * self.pp * self.dp

    @property
    def moe_gpus(self) -> int:
        """GPUs the MoE folding uses: ``etp x ep x edp x pp``."""
        return self.etp * self.ep * self.edp * self.pp

    def as_dict(self) -> dict[str, int]:
        return {"tp": self.tp, "pp": self.pp, "dp": self.dp, "ep": self.ep, "etp": self.etp, "edp": self.edp}


@lru_cache(maxsize=64)
def layout_grid(*, num_gpus: int, is_moe: bool) -> tuple[Layout, ...]:
    """Every layout that uses all ``num_gpus`` GPUs in both foldings: ``tp x pp x dp = N`` and, for MoE,
    ``etp x ep x edp = tp x dp``. Sorted by the tie-break order (see ``tie_break_key``).

    The grid is the solver's domain; every other rule (divisibility, memory, targets) is a constraint on
    it, so that a rule that blocks every layout can be named. Cached (an immutable tuple of frozen
    layouts): the search, its certificate and the diagnosis ask for the same grid several times.
    """
    layouts = []
    for tp in divisors(num_gpus):
        for pp in divisors(num_gpus // tp):
            dp = num_gpus // (tp * pp)
            if not is_moe:
                layouts.append(Layout(tp=tp, pp=pp, dp=dp, ep=1, etp=tp, edp=dp))
                continue
            group = tp * dp
            for ep in divisors(group):
                for etp in divisors(group // ep):
                    layouts.append(Layout(tp=tp, pp=pp, dp=dp, ep=ep, etp=etp, edp=group // (ep * etp)))
    return tuple(sorted(layouts, key=tie_break_key))


def tie_break_key(layout: Layout) -> tuple[int, ...]:
    """Among plans of equal objective, prefer fewer pipeline stages, then smaller TP, then smaller EP,
    then smaller ETP: fewer and smaller collectives, and the same answer on every run."""
    return (layout.pp, layout.tp, layout.ep, layout.etp, layout.dp, layout.edp)


@dataclass(frozen=True)
class Plan:
    """A concrete deployment: sizes, layers per pipeline stage (first stage first) and the number of
    sequences each attention data-parallel replica serves at once."""

    layout: Layout
    layers_per_stage: tuple[int, ...]
    batch_per_replica: int
    notes: tuple[str, ...] = field(default=(), compare=False)


def batch_per_replica(*, concurrent_sequences: int, dp: int) -> int:
    """Sequences on the busiest replica when ``concurrent_sequences`` are spread over ``dp`` replicas."""
    return ceil_div(concurrent_sequences, dp)


def batch_ladder(max_num_seqs: int) -> tuple[int, ...]:
    """Batch sizes per replica a chosen-batch search tries: powers of two below ``max_num_seqs`` and
    ``max_num_seqs`` itself (CUDA-graph capture sizes in vLLM and SGLang are mostly powers of two)."""
    values = {1 << i for i in range(max_num_seqs.bit_length()) if 1 << i <= max_num_seqs} | {max_num_seqs}
    return tuple(sorted(values))


def even_split(*, num_layers: int, pp: int) -> tuple[int, ...]:
    """``num_layers`` over ``pp`` stages as evenly as possible, the extra layers on the later stages."""
    base, extra = divmod(num_layers, pp)
    return tuple(base + (1 if s >= pp - extra else 0) for s in range(pp))


# --- where the groups sit (the rank map decides which link a collective crosses) -------------------


def tp_intra_node(*, tp: int, gpus_per_node: int) -> bool:
    """True if every TP group (``tp`` consecutive ranks) lies inside one node."""
    return gpus_per_node % tp == 0


def ep_offnode_fraction(*, ep: int, etp: int, gpus_per_node: int) -> float:
    """Share of an EP rank's peers that sit on other nodes (0.0: the all-to-all stays on NVLink).

    An EP group is ``ep`` ranks at stride ``etp`` inside an aligned block of ``ep x etp`` ranks. Blocks
    that neither fit a node evenly nor tile whole nodes are treated as all off-node (conservative).
    """
    if ep <= 1:
        return 0.0
    block = ep * etp
    if gpus_per_node % block == 0:
        return 0.0
    if block % gpus_per_node == 0 and gpus_per_node % etp == 0:
        return (ep - gpus_per_node // etp) / (ep - 1)
    return 1.0


def pp_inter_node_boundaries(*, tp: int, dp: int, pp: int, gpus_per_node: int) -> int:
    """How many of the ``pp - 1`` stage boundaries a rank's activations cross between nodes."""
    stride = tp * dp
    if stride >= gpus_per_node:
        return pp - 1
    return (pp - 1) * stride // gpus_per_node


@dataclass(frozen=True)
class RankInfo:
    rank: int
    node: int
    local_gpu: int
    tp_rank: int
    dp_rank: int
    pp_rank: int
    etp_rank: int
    ep_rank: int
    edp_rank: int


def rank_info(*, rank: int, layout: Layout, gpus_per_node: int) -> RankInfo:
    """Coordinates of global ``rank`` (order tp-dp-pp; inside a stage etp-ep-edp)."""
    stage_size = layout.tp * layout.dp
    local = rank % stage_size
    return RankInfo(
        rank=rank,
        node=rank // gpus_per_node,
        local_gpu=rank % gpus_per_node,
        tp_rank=local % layout.tp,
        dp_rank=local // layout.tp,
        pp_rank=rank // stage_size,
        etp_rank=local % layout.etp,
        ep_rank=(local // layout.etp) % layout.ep,
        edp_rank=local // (layout.etp * layout.ep),
    )


def process_groups(*, layout: Layout) -> dict[str, list[list[int]]]:
    """Global ranks of every TP, DP, PP, EP and ETP group, each group sorted, groups sorted."""
    n = layout.gpus
    groups: dict[str, dict[tuple, list[int]]] = {k: {} for k in ("tp", "dp", "pp", "ep", "etp")}
    for rank in range(n):
        info = rank_info(rank=rank, layout=layout, gpus_per_node=max(n, 1))
        groups["tp"].setdefault((info.pp_rank, info.dp_rank), []).append(rank)
        groups["dp"].setdefault((info.pp_rank, info.tp_rank), []).append(rank)
        groups["pp"].setdefault((info.dp_rank, info.tp_rank), []).append(rank)
        groups["ep"].setdefault((info.pp_rank, info.edp_rank, info.etp_rank), []).append(rank)
        groups["etp"].setdefault((info.pp_rank, info.edp_rank, info.ep_rank), []).append(rank)
    return {name: sorted(g.values()) for name, g in groups.items()}
