"""The fleet's shared vocabulary: units, the single-instance scenario a type is judged on, an instance
type with its times per bucket, routes over types. Used by the model builder (``fleet``) and by the
solver-free check (``fleet_check``), which share no other code.

Units: rates in milli-requests per second (mrps), times in integer ns, money in micro-dollars per hour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from optimizer.search.disagg import MAX_INSTANCE_GPUS, _kv_transfer_ns
from optimizer.inputs.fleet import Bucket, Pool, Service
from optimizer.model.parallel import Layout, Plan
from optimizer.inputs.scenario import Objective, Scenario, Search, Targets, Workload

MRPS_PER_RPS = 1000  # rates in milli-requests per second
SLOT_SCALE = MRPS_PER_RPS * 10**9  # mrps x ns -> slots x 10^12
MICRO_DOLLARS = 10**6

ROLES = ("aggregated", "prefill", "decode")


def floor_ns(seconds: Fraction) -> int:
    """A target in seconds as integer ns, rounded down (a time within it is within the target)."""
    value = seconds * 10**9
    return value.numerator // value.denominator


def carried_mrps(bucket: Bucket, headroom: Fraction) -> int:
    """The rate a bucket must be carried at, with headroom, in mrps, rounded up (conservative)."""
    value = bucket.request_rate_per_s * (1 + headroom) * MRPS_PER_RPS
    return -(-value.numerator // value.denominator)


def instance_sizes(pool: Pool) -> tuple[int, ...]:
    """Powers of two up to ``MAX_INSTANCE_GPUS`` and the pool's size that fit inside one node or tile whole
    nodes (an instance never shares a node partially with itself)."""
    sizes, g = [], 1
    while g <= min(pool.num_gpus, MAX_INSTANCE_GPUS):
        if (g <= pool.gpus_per_node and pool.gpus_per_node % g == 0) or g % pool.gpus_per_node == 0:
            sizes.append(g)
        g *= 2
    return tuple(sizes)


def service_scenario(service: Service, pool: Pool, bucket: Bucket, gpus: int, role: str) -> Scenario:
    """The single-instance scenario one type is judged on: ``gpus`` GPUs of ``pool``, the bucket's ISL and
    OSL, no targets (the fleet compares them itself), the batch chosen (aggregated, decode) or one prompt
    per replica (prefill)."""
    objective = Objective.TTFT if role == "prefill" else Objective.THROUGHPUT_PER_GPU
    return Scenario(
        name=f"{service.name}@{pool.name}.{bucket.name}.{gpus}gpu.{role}",
        cluster=pool.cluster(gpus), model=service.model, engine=service.engine, targets=Targets(),
        workload=Workload(concurrent_sequences=1 if role == "prefill" else service.engine.max_num_seqs,
                          input_tokens=bucket.input_tokens, output_tokens=bucket.output_tokens,
                          weight_dtype=service.weight_dtype, kv_cache_dtype=service.kv_cache_dtype),
        search=Search(objective=objective, gpu_memory_utilization=service.gpu_memory_utilization),
    )


@dataclass(frozen=True)
class BucketTimes:
    """One type on one bucket, integer ns: ``work_ns`` a request holds a slot (aggregated: request
    latency; prefill: prefill time; decode: (OSL - 1) steps), TTFT and TPOT at full load, KV transfer."""

    work_ns: int
    ttft_ns: int
    tpot_ns: int
    kv_ns: int = 0


@dataclass(frozen=True)
class InstanceType:
    """One kind of engine instance a service can run on a pool, with its times per bucket it can carry."""

    service: int
    pool: int
    role: str
    layout: Layout
    batch_per_replica: int
    layers_per_stage: tuple[int, ...] | None  # None until resolved (aggregated PP > 1: ``resolve_splits``)
    times: tuple[BucketTimes | None, ...]  # per bucket of the service; None: not carried
    engine_instances: int = 1  # engine processes it launches as (engines.instances: DP replicas of a dense model)

    @property
    def gpus(self) -> int:
        return self.layout.gpus

    @property
    def slots(self) -> int:
        """Requests one instance holds at once: DP prompts (prefill) or DP x batch sequences."""
        return self.layout.dp * (1 if self.role == "prefill" else self.batch_per_replica)

    def capacity_mrps(self, b: int) -> int:
        """Requests per instance on bucket ``b`` alone, mrps, rounded down (0 when not carried)."""
        times = self.times[b]
        return 0 if times is None else self.slots * SLOT_SCALE // times.work_ns

    def plan(self) -> Plan:
        return Plan(layout=self.layout, layers_per_stage=self.layers_per_stage, batch_per_replica=self.batch_per_replica)


def bucket_times(role: str, service: Service, bucket: Bucket, sub: Scenario, *, ttft_ns: int, tpot_ns: int, latency_ns: int,
                  prefill_share_ns: int, layout: Layout, split: tuple[int, ...] | None) -> BucketTimes | None:
    """One candidate's times on one bucket, None when the service's targets rule it out. ``split`` is needed
    for the KV transfer of the disaggregated roles (each GPU sends or receives its stage's layers)."""
    ttft, tpot = floor_ns(service.targets.ttft_s), floor_ns(service.targets.tpot_s)
    if role == "aggregated":
        if ttft_ns > ttft or tpot_ns > tpot:
            return None
        return BucketTimes(latency_ns, ttft_ns, tpot_ns)
    kv = _kv_transfer_ns(sub, layout, split)
    if role == "prefill":
        if ttft_ns + kv > ttft:
            return None
        return BucketTimes(ttft_ns, ttft_ns, 0, kv)
    step = tpot_ns - prefill_share_ns
    if step > tpot or kv > ttft:
        return None
    return BucketTimes((bucket.output_tokens - 1) * step, 0, step, kv)


@dataclass(frozen=True)
class Route:
    """A way to carry bucket ``bucket`` of service ``service``: one aggregated type (``side`` 0), or half
    of a disaggregated one: a decode type (``side`` +1, it carries the bucket) or a prefill type (``side``
    -1). Levels (``FleetTypes.levels``) are the bucket's distinct KV receive times ``K`` in ascending
    order: a decode half sits at its own; a prefill half at the highest ``K`` with ``prefill + max(KV
    send, K) <= TTFT`` (it may pair with any decode at that level or below). The model then needs
    ``P + D`` rate variables per bucket instead of ``P x D`` pairs, with Hall's condition per level
    (``solve.FleetIntegers``); ``check_allocation`` re-checks it on re-derived times."""

    service: int
    bucket: int
    types: tuple[int, ...]
    side: int = 0
    level: int = -1


@dataclass
class FleetTypes:
    """The instance types after pruning, the routes over them, and the counts before pruning."""

    types: list[InstanceType]
    routes: list[Route]
    before: int
    evaluate_s: float
    levels: list[tuple[int, int, int]] = field(default_factory=list)  # (service, bucket, K = KV receive ns), ascending per bucket
