"""Fleet files: GPU pools (the inventory a team owns or rents) and services (a model, an engine, targets and
traffic as request-size buckets), read strictly into frozen, validated models. ``optimizer.search.fleet`` plans
them; ``optimize schema fleet`` prints the JSON Schema of the file.

Units: tokens, requests per second (exact decimals as written: ``0.05`` is 1/20), seconds for targets,
dollars per GPU-hour (exact decimal). Request-size buckets follow Mélange's slices (Griggs et al., 2024,
arXiv 2404.14527, section 4): each bucket is one (ISL, OSL) class with its own rate.

Errors: every problem is a ``ScenarioError`` naming the file and the dotted field (``services.1.buckets.0.
request_rate_per_s``); the CLI exits 2 with it.
"""

from __future__ import annotations

import math
from enum import StrEnum
from fractions import Fraction
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from optimizer.inputs import catalog
from optimizer.errors import ScenarioError
from optimizer.inputs.loader import _resolve_cluster, _scenario_error, read_mapping, resolve_model
from optimizer.inputs.scenario import (
    Cluster,
    Dtype,
    Engine,
    EngineName,
    ExactNumber,
    GpuSpec,
    Link,
    ModelSpec,
    _Frozen,
)

FLEET_DIR = (Path(__file__).resolve().parent / "fleets").resolve()  # fleets/ at the root, through the package's link


def _positive(value: Fraction | None) -> Fraction | None:
    if value is not None and value <= 0:
        raise ValueError(f"must be > 0, got {float(value)}")
    return value


class FleetObjective(StrEnum):
    """``cost``: dollars per hour, every pool priced. ``gpus``: GPUs, each GPU of any kind weighing 1 (the
    stated rule when prices are absent: a GPU is a GPU)."""

    COST = "cost"
    GPUS = "gpus"


class Pool(_Frozen):
    """GPUs of one kind: ``num_nodes`` nodes of ``gpus_per_node``, the node links, and the price of one GPU
    for one hour (dollars, exact decimal; optional with objective ``gpus``)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    gpu: GpuSpec
    num_nodes: int = Field(gt=0, le=1 << 16)
    gpus_per_node: int = Field(gt=0, le=1 << 10)
    gpus_per_host: int | None = Field(default=None, gt=0, le=1 << 10,
                                      description="GPUs per machine where a node is an NVLink domain of several (Cluster)")
    intra_node_link: Link
    inter_node_link: Link
    cost_per_gpu_hour: ExactNumber | None = None

    @field_validator("cost_per_gpu_hour")
    @classmethod
    def _price(cls, value: Fraction | None) -> Fraction | None:
        value = _positive(value)
        if value is not None and (value * 10**6).denominator != 1:
            raise ValueError(f"{value} dollars is finer than a micro-dollar (the objective counts micro-dollars per hour exactly)")
        return value

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    def cluster(self, gpus: int) -> Cluster:
        """The cluster one instance of ``gpus`` GPUs sees: inside one node, or on whole nodes of this pool."""
        nodes, per = (1, gpus) if gpus <= self.gpus_per_node else (gpus // self.gpus_per_node, self.gpus_per_node)
        host = self.gpus_per_host
        hosts = None if host is None or per <= host else math.gcd(per, host)  # the machines the instance's node spans
        return Cluster(gpu=self.gpu, num_nodes=nodes, gpus_per_node=per, gpus_per_host=hosts,
                       intra_node_link=self.intra_node_link, inter_node_link=self.inter_node_link)


class Bucket(_Frozen):
    """One request-size class of a service: ISL, OSL and the rate it arrives at (requests per second)."""

    name: str = Field(min_length=1)
    input_tokens: int = Field(gt=0, le=1 << 24)
    output_tokens: int = Field(gt=1, le=1 << 24, description=">= 2: a decode step follows the first token")
    request_rate_per_s: ExactNumber

    _positive_rate = field_validator("request_rate_per_s")(lambda v: _positive(v))


class ServiceTargets(_Frozen):
    """TTFT and TPOT every request of the service must meet (seconds, exact decimals)."""

    ttft_s: ExactNumber
    tpot_s: ExactNumber

    _positive_times = field_validator("ttft_s", "tpot_s")(lambda v: _positive(v))


class Service(_Frozen):
    """One model served to its traffic (engine default: vLLM). ``pools`` pins it to some pools (default:
    any); ``max_instances`` bounds its engine instances of every type together; ``disaggregated`` also offers prefill and decode
    instances (possibly on different pools, the KV cache moved between them)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: ModelSpec
    engine: Engine = Engine(name=EngineName.VLLM)
    targets: ServiceTargets
    buckets: tuple[Bucket, ...] = Field(min_length=1, max_length=16)
    weight_dtype: Dtype = Dtype.BF16
    kv_cache_dtype: Dtype = Dtype.BF16
    gpu_memory_utilization: ExactNumber = Fraction(9, 10)
    pools: tuple[str, ...] | None = Field(default=None, min_length=1)
    max_instances: int | None = Field(default=None, gt=0, le=1 << 20)
    disaggregated: bool = False

    @model_validator(mode="after")
    def _unique_buckets(self) -> Service:
        names = [b.name for b in self.buckets]
        if len(set(names)) != len(names):
            raise ValueError(f"bucket names must be unique, got {names}")
        return self

    @field_validator("gpu_memory_utilization")
    @classmethod
    def _fraction(cls, value: Fraction) -> Fraction:
        if not 0 < value <= 1:
            raise ValueError(f"must be in (0, 1], got {float(value)}")
        return value


class Fleet(_Frozen):
    """Pools and services, the objective and the headroom (a fraction of every bucket's rate carried on
    top: 0.2 plans for 1.2 x the rate)."""

    name: str = Field(min_length=1)
    description: str = ""
    pools: tuple[Pool, ...] = Field(min_length=1, max_length=16)
    services: tuple[Service, ...] = Field(min_length=1, max_length=64)
    objective: FleetObjective = FleetObjective.COST
    headroom: ExactNumber = Fraction(0)

    @model_validator(mode="after")
    def _consistent(self) -> Fleet:
        pools = [p.name for p in self.pools]
        if len(set(pools)) != len(pools):
            raise ValueError(f"pool names must be unique, got {pools}")
        services = [s.name for s in self.services]
        if len(set(services)) != len(services):
            raise ValueError(f"service names must be unique, got {services}")
        return self

    @field_validator("headroom")
    @classmethod
    def _headroom(cls, value: Fraction) -> Fraction:
        if not 0 <= value <= 10:
            raise ValueError(f"must be a fraction of the rate in [0, 10], got {float(value)}")
        return value

    def pool(self, name: str) -> Pool:
        return next(p for p in self.pools if p.name == name)


def shipped_fleets() -> dict[str, Path]:
    """Shipped fleet names (file stem) -> path, sorted by name."""
    if not FLEET_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(FLEET_DIR.glob("*.yaml"))}


def load_fleet(name_or_path: str | Path) -> Fleet:
    """Load a shipped fleet by name (``chat-2x2``) or any fleet file by path (YAML or JSON, read strictly
    as scenarios are: ``loader.read_mapping``).

    Raises:
        ScenarioError: unknown name, unreadable file, or an invalid field (file and dotted field named).
    """
    path = Path(name_or_path)
    shipped = shipped_fleets()
    if not path.exists() and str(name_or_path) in shipped:
        path = shipped[str(name_or_path)]
    elif not path.exists():
        raise ScenarioError(f"no such file or shipped fleet (shipped: {', '.join(shipped) or 'none'})", source=str(name_or_path))
    data = read_mapping(path)
    data.setdefault("name", path.stem)
    return fleet_from_dict(data, source=str(path), base_dir=path.parent)


def fleet_from_dict(data: dict[str, Any], *, source: str = "<inline>", base_dir: Path | None = None) -> Fleet:
    """Resolve catalog GPU and model names (and ``config_json`` paths), then validate into a ``Fleet``.

    Raises:
        ScenarioError: with ``source`` and the dotted field of the first problem.
    """
    if not isinstance(data, dict):
        raise ScenarioError("expected a mapping of fields at the top level", source=source)
    resolved = dict(data)
    for key, resolve in (("pools", _resolve_pool), ("services", _resolve_service)):
        items = resolved.get(key)
        if isinstance(items, list):
            resolved[key] = [_at(resolve, item, source=source, field=f"{key}.{i}", base_dir=base_dir or Path("."))
                             for i, item in enumerate(items)]
    try:
        fleet = Fleet.model_validate(resolved)
    except ValidationError as exc:
        raise _scenario_error(exc, source=source) from None
    names = {p.name for p in fleet.pools}
    for i, service in enumerate(fleet.services):
        for pin in service.pools or ():
            if pin not in names:
                raise ScenarioError(f"unknown pool {pin!r}; pools: {', '.join(sorted(names))}", source=source,
                                    field=f"services.{i}.pools")
        problem = catalog.stack_problem(service.engine.calibration_stack)
        if problem:
            raise ScenarioError(problem, source=source, field=f"services.{i}.engine.calibration_stack")
        if service.engine.calibration_file is not None:  # fitted on one GPU; a fleet prices every pool's GPU
            raise ScenarioError("a calibration file (optimize calibrate) holds step parameters for one GPU, and a "
                                "fleet service is priced on every pool's GPU; plan the service alone with a scenario "
                                "that names the file, or remove engine.calibration_file here", source=source,
                                field=f"services.{i}.engine.calibration_file")
    if fleet.objective is FleetObjective.COST:
        for i, pool in enumerate(fleet.pools):
            if pool.cost_per_gpu_hour is None:
                raise ScenarioError("objective cost needs every pool's price; give cost_per_gpu_hour or set objective: gpus",
                                    source=source, field=f"pools.{i}.cost_per_gpu_hour")
    return fleet


def _at(resolve: Any, item: Any, *, source: str, field: str, base_dir: Path) -> Any:
    """``resolve(item)``, its errors re-anchored at ``field`` of the fleet file."""
    try:
        return resolve(item, source=source, base_dir=base_dir)
    except ScenarioError as exc:
        inner = exc.field or ""
        raise ScenarioError(exc.message, source=source, field=f"{field}.{inner}" if inner else field) from None


def _resolve_pool(pool: Any, *, source: str, base_dir: Path) -> Any:
    if not isinstance(pool, dict):
        return pool
    try:
        cluster = _resolve_cluster({"gpu": pool.get("gpu")}, source=source) if "gpu" in pool else {}
    except ScenarioError as exc:  # the scenario loader names cluster.gpu; here it is the pool's gpu
        raise ScenarioError(exc.message, source=source, field="gpu") from None
    merged = dict(pool)
    if isinstance(cluster, dict):
        for key, value in cluster.items():
            if key == "gpu" or key not in merged:
                merged[key] = value
    return merged


def _resolve_service(service: Any, *, source: str, base_dir: Path) -> Any:
    if not isinstance(service, dict) or "model" not in service:
        return service
    return {**service, "model": resolve_model(service["model"], source=source, base_dir=base_dir)}


def fleet_schema() -> dict[str, Any]:
    """The JSON Schema of a fleet file: ``Fleet`` with the shorthands the loader accepts (a catalog GPU
    name for ``pools[].gpu`` with its node shape and links, a catalog model name or ``config_json``)."""
    schema = Fleet.model_json_schema(mode="validation")
    defs = schema["$defs"]
    pool = defs["Pool"]
    pool["properties"]["gpu"] = {"anyOf": [{"type": "string", "enum": catalog.gpu_names(), "description": "a catalog GPU"},
                                           {"$ref": "#/$defs/GpuSpec"}]}
    pool["required"] = [k for k in pool.get("required", []) if k not in catalog.CLUSTER_DEFAULT_KEYS]
    service = defs["Service"]
    config_json = {"type": "object", "required": ["config_json"], "additionalProperties": True,
                   "properties": {"config_json": {"type": "string", "description": "path to a Hugging Face config.json"}}}
    repo_id = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$",
               "description": "a Hugging Face repo id whose name is a catalog model (meta-llama/Llama-3.1-8B)"}
    service["properties"]["model"] = {"anyOf": [{"type": "string", "description": "a catalog model", "enum": catalog.model_names()},
                                                repo_id, config_json, {"$ref": "#/$defs/ModelSpec"}]}
    schema["required"] = [k for k in schema.get("required", []) if k != "name"]
    schema["title"] = "optimizer fleet file"
    return schema
