"""Reading scenarios: YAML (``yaml.safe_load`` only) or JSON files, shipped names, catalog names, and
Hugging Face ``config.json`` files, into a validated ``Scenario``. Every failure is a ``ScenarioError``
naming the file, the field, what is wrong and what would be right.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from optimizer import catalog
from optimizer.calibration import shipped_calibration
from optimizer.errors import OptimizerError, ScenarioError
from optimizer.scenario import ModelSpec, Objective, Scenario

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"

# Architectures whose config.json fields ModelSpec reads completely (Hugging Face transformers names).
SUPPORTED_ARCHITECTURES = (
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
    "GptOssForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "MixtralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
)


def shipped_scenarios() -> dict[str, Path]:
    """Shipped scenario names (file stem) -> path, sorted by name."""
    if not SCENARIO_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(SCENARIO_DIR.glob("*.yaml"))}


def read_mapping(path: Path, *, error: type[ScenarioError] = ScenarioError) -> dict[str, Any]:
    """Parse a YAML or JSON file that must hold a mapping.

    Raises:
        ScenarioError (or ``error``): missing or unreadable file, bad syntax, not a mapping.
    """
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error("file not found", source=source) from None
    except IsADirectoryError:
        raise error("is a directory, expected a YAML or JSON file", source=source) from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}", source=source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error("not UTF-8 text (is it a binary file?)", source=source) from None
    try:
        data = _parse(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"invalid YAML{where}: {problem}", source=source) from None
    except RecursionError:  # PyYAML's parser recurses once per level of nesting
        raise error("nested too deeply to read (hundreds of levels); a scenario or plan is a few levels deep",
                    source=source) from None
    if not isinstance(data, dict):
        raise error(f"expected a mapping of fields at the top level, got {_kind(data)}", source=source)
    return data


def _parse(text: str) -> Any:
    """JSON first, then YAML (``yaml.safe_load``). JSON is YAML 1.2, but PyYAML reads the escaped pair of
    one character beyond U+FFFF (``"\\ud83d\\ude80"``, as ``json.dumps`` writes it) as two lone surrogates."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return yaml.safe_load(text)


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a shipped scenario by name (``16gpu-30b``) or any scenario file by path.

    Raises:
        ScenarioError: unknown name, unreadable file, or an invalid field (named in the error).
    """
    path = Path(name_or_path)
    shipped = shipped_scenarios()
    if not path.exists() and str(name_or_path) in shipped:
        path = shipped[str(name_or_path)]
    elif not path.exists():
        names = ", ".join(shipped) or "none"
        raise ScenarioError(f"no such file or shipped scenario (shipped: {names})", source=str(name_or_path))
    data = read_mapping(path)
    data.setdefault("name", path.stem)
    return scenario_from_dict(data, source=str(path), base_dir=path.parent)


def scenario_from_dict(data: dict[str, Any], *, source: str = "<inline>", base_dir: Path | None = None) -> Scenario:
    """Resolve catalog names and ``config_json`` paths in ``data``, then validate it into a Scenario.

    Raises:
        ScenarioError: with ``source`` and the dotted field of the first problem; all problems listed.
    """
    if not isinstance(data, dict):
        raise ScenarioError(f"expected a mapping, got {_kind(data)}", source=source)
    resolved = dict(data)
    if "cluster" in resolved:
        resolved["cluster"] = _resolve_cluster(resolved["cluster"], source=source)
    if "model" in resolved:
        resolved["model"] = resolve_model(resolved["model"], source=source, base_dir=base_dir or Path("."))
    try:
        scenario = Scenario.model_validate(resolved)
    except ValidationError as exc:
        raise _scenario_error(exc, source=source) from None
    if scenario.search.objective is Objective.FEWEST_GPUS and scenario.targets.request_rate_per_s is None:
        raise ScenarioError("search.objective fewest_gpus needs the requests per second to carry",
                            source=source, field="targets.request_rate_per_s")
    try:  # a stack the calibration does not have is bad input, said here rather than deep in the cost model
        shipped_calibration().stack_for(scenario.engine.name.value, scenario.engine.calibration_stack)
    except OptimizerError as exc:
        raise ScenarioError(str(exc), source=source, field="engine.calibration_stack") from None
    return scenario


def _resolve_cluster(cluster: Any, *, source: str) -> Any:
    if not isinstance(cluster, dict):
        return cluster  # pydantic reports the type error with its field
    cluster = dict(cluster)
    gpu = cluster.get("gpu")
    entry: dict[str, Any] | None = None
    if isinstance(gpu, str):
        entry = catalog.gpu_entry(gpu)
        if entry is None:
            raise ScenarioError(
                f"unknown GPU {gpu!r}; known: {', '.join(catalog.gpu_names())}, or give the spec inline",
                source=source,
                field="cluster.gpu",
            )
    elif isinstance(gpu, dict) and isinstance(gpu.get("name"), str) and catalog.gpu_entry(gpu["name"]):
        entry = {**catalog.gpu_entry(gpu["name"]), **gpu}  # type: ignore[dict-item]
    elif isinstance(gpu, dict):
        entry = dict(gpu)
    if entry is not None:
        for key in catalog.CLUSTER_DEFAULT_KEYS:
            default = entry.pop(key, None)
            if default is not None:
                cluster.setdefault(key, default)
        cluster["gpu"] = entry
    return cluster


def resolve_model(model: Any, *, source: str, base_dir: Path) -> Any:
    """Turn ``"Qwen3-30B-A3B"``, ``{name: X, overrides...}`` or ``{config_json: path}`` into fields."""
    if isinstance(model, str):
        entry = catalog.model_entry(model)
        if entry is None:
            raise ScenarioError(
                f"unknown model {model!r}; known: {', '.join(catalog.model_names())}, "
                "or give config.json fields inline, or config_json: PATH",
                source=source,
                field="model",
            )
        return entry
    if not isinstance(model, dict):
        return model
    model = dict(model)
    if "config_json" in model:
        path = Path(str(model.pop("config_json")))
        path = path if path.is_absolute() else base_dir / path
        try:
            fields = model_fields_from_config_json(path)
        except ScenarioError as exc:  # name the scenario too: it is the file that points at the config
            raise ScenarioError(str(exc), source=source, field="model.config_json") from None
        return _follow_layer_count({**fields, **model}, model)
    name = model.get("name")
    entry = catalog.model_entry(name) if isinstance(name, str) else None
    return _follow_layer_count({**entry, **model}, model) if entry else model


def _follow_layer_count(merged: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A base model's per-layer ``layer_types`` repeated (its pattern cycled) to an overridden
    ``num_hidden_layers``, unless the overrides give ``layer_types`` too: a 36-layer gpt-oss list must not
    make a shortened 8-layer gpt-oss invalid."""
    types, layers = merged.get("layer_types"), merged.get("num_hidden_layers")
    if ("num_hidden_layers" in overrides and "layer_types" not in overrides and isinstance(types, (list, tuple)) and types
            and isinstance(layers, int) and not isinstance(layers, bool) and 0 < layers <= 1 << 16 and len(types) != layers):
        merged["layer_types"] = [types[i % len(types)] for i in range(layers)]
    return merged


def model_fields_from_config_json(path: Path) -> dict[str, Any]:
    """Read the ModelSpec fields from a Hugging Face ``config.json``; other keys (rope, dropout, ...)
    do not change memory or cost here and are ignored.

    Raises:
        ScenarioError: unreadable file, an unsupported ``architectures`` value, or layer patterns
            (``decoder_sparse_step`` > 1, ``mlp_only_layers``) the planner does not model.
    """
    data = read_mapping(path)
    source = str(path)
    archs = data.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ScenarioError(
            f"architectures={archs!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}",
            source=source,
            field="architectures",
        )
    if data.get("decoder_sparse_step", 1) not in (1, None) or data.get("mlp_only_layers"):
        raise ScenarioError(
            "interleaved dense/MoE layers (decoder_sparse_step > 1 or mlp_only_layers) are not modelled",
            source=source,
            field="decoder_sparse_step",
        )
    known = set(ModelSpec.model_fields) | {"num_local_experts", "n_routed_experts"}
    fields = {k: v for k, v in data.items() if k in known and v is not None}
    fields["architecture"] = arch
    fields.setdefault("name", str(data.get("_name_or_path") or path.parent.name or path.stem))
    return fields


def _scenario_error(exc: ValidationError, *, source: str) -> ScenarioError:
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<top>"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling against the documented fields)"
        elif err["type"] == "missing":
            message = "required field is missing"
        given = err.get("input")
        if err["type"] not in ("missing", "extra_forbidden") and not isinstance(given, dict):
            message += f" (got {given!r})"
        problems.append((field, message))
    first_field, first_message = problems[0]
    more = "".join(f"; {f}: {m}" for f, m in problems[1:])
    return ScenarioError(first_message + more, source=source, field=first_field)


def _kind(value: Any) -> str:
    return "an empty file" if value is None else f"a {type(value).__name__}"
