"""Reading scenarios: YAML (``yaml.safe_load`` only) or JSON files, shipped names, catalog names, and
Hugging Face ``config.json`` files, into a validated ``Scenario``. Every failure is a ``ScenarioError``
naming the file, the field, what is wrong and what would be right.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from optimizer.inputs import catalog
from optimizer.inputs.calibration_file import calibration_data, calibration_file_problem
from optimizer.errors import ScenarioError
from optimizer.inputs.scenario import EngineName, ModelSpec, Objective, Scenario

# The shipped scenarios: scenarios/ at the repository root, reached through the package's link
# optimizer/inputs/scenarios (so a wheel carries them as package data); resolved, so messages name scenarios/.
SCENARIO_DIR = (Path(__file__).resolve().parent / "scenarios").resolve()

# Architectures whose config.json fields ModelSpec reads completely (Hugging Face transformers names).
SUPPORTED_ARCHITECTURES = (
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
    "Gemma3ForCausalLM",  # text-only Gemma 3 (1B): sliding_window_pattern or layer_types; the extra norms are not counted
    "Glm4MoeForCausalLM",  # GLM-4.5/4.6: DeepSeek-style MoE fields, GQA with q/k/v biases; the MTP layer is excluded
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


MAX_INPUT_BYTES = 4 << 20  # a scenario, a plan or a config.json is a few KiB; anything past this is not one
MAX_INPUT_VALUES = 100_000  # values once YAML anchors and aliases are expanded (a "billion laughs" stops here)
MAX_INPUT_DEPTH = 32  # levels of nesting (a scenario is four deep)


def read_mapping(path: Path, *, error: type[ScenarioError] = ScenarioError) -> dict[str, Any]:
    """Parse a YAML or JSON file that must hold a mapping: a regular file of at most ``MAX_INPUT_BYTES``,
    UTF-8, no duplicate keys, at most ``MAX_INPUT_DEPTH`` levels and ``MAX_INPUT_VALUES`` values once
    YAML aliases are expanded. YAML is read as YAML 1.2 reads numbers: ``1:0`` is text, not 60 (YAML 1.1's
    base 60).

    Raises:
        ScenarioError (or ``error``): missing, unreadable, not a regular file, too large, bad syntax,
            duplicate keys, too deep or too many values, not a mapping. The message never repeats the input.
    """
    source = str(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error("file not found", source=source) from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}", source=source) from None
    if path.is_dir():
        raise error("is a directory, expected a YAML or JSON file", source=source)
    if not path.is_file():
        raise error("not a regular file (a device, pipe or socket); expected a YAML or JSON file", source=source)
    if info.st_size > MAX_INPUT_BYTES:
        raise error(f"{info.st_size:,} bytes; a scenario, plan or config.json is a few KiB (at most {MAX_INPUT_BYTES:,} read)",
                    source=source)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}", source=source) from None
    if len(raw) > MAX_INPUT_BYTES:
        raise error(f"more than {MAX_INPUT_BYTES:,} bytes; a scenario, plan or config.json is a few KiB", source=source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error("not UTF-8 text (is it a binary file?)", source=source) from None
    try:
        data = _parse(text)
    except _DuplicateKey as exc:
        raise error(f"the key {str(exc)[:80]!r} appears twice in one mapping; keep one", source=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"invalid YAML{where}: {problem[:200]}", source=source) from None
    except RecursionError:  # PyYAML's pure-Python parser recurses once per level of nesting
        raise error(f"nested too deeply to read; a scenario or plan is a few levels deep (at most {MAX_INPUT_DEPTH})",
                    source=source) from None
    problem = _shape_problem(data)
    if problem:
        raise error(problem, source=source)
    if not isinstance(data, dict):
        raise error(f"expected a mapping of fields at the top level, got {_kind(data)}", source=source)
    return data


class _DuplicateKey(Exception):
    """A mapping names one key twice (YAML and JSON both allow it silently: the last one would win)."""


def _no_duplicates(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(str(key))
        out[key] = value
    return out


_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser where PyYAML was built with it
_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


class _StrictLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """``yaml.safe_load`` with two differences: a key given twice in one mapping is an error, and numbers
    are YAML 1.2's (no base 60: ``1:0`` stays text, as every YAML 1.2 reader and JSON see it)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201 (PyYAML's signature)
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise _DuplicateKey(str(key))
                    seen.add(key)
                except TypeError:  # an unhashable key: SafeConstructor reports it
                    pass
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}
# PyYAML's own int and float patterns (resolver.py) less their base-60 alternatives.
_StrictLoader.add_implicit_resolver(_INT, re.compile(r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""", re.X), list("-+0123456789"))
_StrictLoader.add_implicit_resolver(_FLOAT, re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


def _parse(text: str) -> Any:
    """JSON first, then YAML (``_StrictLoader``). JSON is YAML 1.2, but PyYAML reads the escaped pair of
    one character beyond U+FFFF (``"\\ud83d\\ude80"``, as ``json.dumps`` writes it) as two lone surrogates."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a safe loader: SafeConstructor's types only)


def _shape_problem(data: Any) -> str | None:
    """Too deep or too many values (aliases expanded), said without walking an expansion: shared
    subtrees (YAML aliases) are measured once and counted as often as they appear."""
    sizes: dict[int, int] = {}

    def size(value: Any, depth: int) -> int:
        if depth > MAX_INPUT_DEPTH:
            raise _TooBig(f"nested more than {MAX_INPUT_DEPTH} levels deep; a scenario or plan is a few levels deep")
        if not isinstance(value, (dict, list)):
            return 1
        known = sizes.get(id(value))
        if known is not None:
            return known
        children = value.items() if isinstance(value, dict) else enumerate(value)
        total = 1
        for _, child in children:
            total += size(child, depth + 1)
            if total > MAX_INPUT_VALUES:
                raise _TooBig(f"more than {MAX_INPUT_VALUES:,} values once YAML anchors and aliases are expanded; "
                              "a scenario or plan holds a few hundred")
        sizes[id(value)] = total
        return total

    try:
        size(data, 0)
    except _TooBig as exc:
        return str(exc)
    return None


class _TooBig(Exception):
    pass


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
    engine = resolved.get("engine")
    if isinstance(engine, dict) and isinstance(engine.get("calibration_file"), str) and engine["calibration_file"].strip():
        cal_path = Path(engine["calibration_file"])  # relative to the scenario's folder, as model.config_json
        resolved["engine"] = {**engine, "calibration_file": str(cal_path if cal_path.is_absolute() else (base_dir or Path(".")) / cal_path)}
    resolved = _resolve_draft_model(resolved, source=source, base_dir=base_dir or Path("."))
    try:
        scenario = Scenario.model_validate(resolved)
    except ValidationError as exc:
        raise _scenario_error(exc, source=source) from None
    if scenario.search.objective is Objective.FEWEST_GPUS and scenario.targets.request_rate_per_s is None:
        raise ScenarioError("search.objective fewest_gpus needs the requests per second to carry",
                            source=source, field="targets.request_rate_per_s")
    problem = catalog.stack_problem(scenario.engine.calibration_stack)  # said here, not deep in the cost model
    if problem:
        raise ScenarioError(problem, source=source, field="engine.calibration_stack")
    if scenario.engine.name is EngineName.TENSORRT_LLM and catalog.is_amd_instinct(scenario.cluster.gpu.name):
        raise ScenarioError(f"TensorRT-LLM runs on NVIDIA GPUs only (CUDA), and {scenario.cluster.gpu.name} is an AMD "
                            "Instinct part; use engine vllm or sglang (both have ROCm builds)", source=source, field="engine.name")
    if scenario.engine.calibration_file is not None:
        try:
            cal_data = read_calibration_file(Path(scenario.engine.calibration_file))
        except ScenarioError as exc:
            raise ScenarioError(str(exc), source=source, field="engine.calibration_file") from None
        problem = calibration_file_problem(cal_data, gpu=scenario.cluster.gpu.name, engine=scenario.engine.name.value)
        if problem:
            raise ScenarioError(f"{scenario.engine.calibration_file} {problem}", source=source, field="engine.calibration_file")
    return scenario


def _resolve_draft_model(data: dict[str, Any], *, source: str, base_dir: Path) -> dict[str, Any]:
    """``engine.speculative.draft_config`` resolved as ``model`` is (catalog name, config.json fields or path)."""
    engine = data.get("engine")
    spec = engine.get("speculative") if isinstance(engine, dict) else None
    if not isinstance(spec, dict) or spec.get("draft_config") is None:
        return data
    try:
        draft = resolve_model(spec["draft_config"], source=source, base_dir=base_dir)
    except ScenarioError as exc:
        raise ScenarioError(exc.message, source=source, field="engine.speculative.draft_config" +
                            (exc.field[len("model"):] if exc.field and exc.field.startswith("model") else "")) from None
    return {**data, "engine": {**engine, "speculative": {**spec, "draft_config": draft}}}


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
                f"unknown GPU {gpu!r}{catalog.did_you_mean(gpu, catalog.gpu_names())}; known: {', '.join(catalog.gpu_names())}, "
                "or give the spec inline",
                source=source,
                field="cluster.gpu",
            )
    elif isinstance(gpu, dict) and isinstance(gpu.get("name"), str) and catalog.gpu_entry(gpu["name"]):
        base = catalog.gpu_entry(gpu["name"])  # an alias ("H100") keeps the catalog's name: the calibration is by name
        entry = {**base, **gpu, "name": base["name"]}  # type: ignore[dict-item]
    elif isinstance(gpu, dict):
        entry = dict(gpu)
    if entry is not None:
        host_given = "gpus_per_host" in cluster
        for key in catalog.CLUSTER_DEFAULT_KEYS:
            default = entry.pop(key, None)
            if default is not None:
                cluster.setdefault(key, default)
        per, host = cluster.get("gpus_per_node"), cluster.get("gpus_per_host")
        if not host_given and isinstance(per, int) and isinstance(host, int) and host > 0:
            # the catalog's machine size, for a node the user may have drawn smaller (part of an NVL72 rack):
            # one machine when the node fits in one, else the machines it spans (as fleet.Pool.cluster)
            cluster["gpus_per_host"] = None if per <= host else math.gcd(per, host)
        cluster["gpu"] = entry
    return cluster


def resolve_model(model: Any, *, source: str, base_dir: Path) -> Any:
    """Turn ``"Qwen3-30B-A3B"``, ``{name: X, overrides...}`` or ``{config_json: path}`` into fields."""
    if isinstance(model, str):
        entry = catalog.model_entry(model)
        if entry is None:
            raise ScenarioError(
                f"unknown model {model!r}{catalog.did_you_mean(model, catalog.model_names())}; known: "
                f"{', '.join(catalog.model_names())}, or give config.json fields inline, or config_json: PATH",
                source=source,
                field="model",
            )
        return entry
    if not isinstance(model, dict):
        return model
    model = dict(model)
    if _is_config_json(model):  # a config.json pasted inline reads exactly as the file does
        return model_fields_from_config(model, source=source, field="model")
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
    """Read the ModelSpec fields from a Hugging Face ``config.json`` file (see ``model_fields_from_config``).

    Raises:
        ScenarioError: unreadable file, or what ``model_fields_from_config`` refuses.
    """
    data = read_mapping(path)
    fields = model_fields_from_config(data, source=str(path), field="")
    fields.setdefault("name", str(data.get("_name_or_path") or path.parent.name or path.stem))
    return fields


# The keys that make a model mapping a Hugging Face config.json rather than our own ModelSpec form: every
# config.json that transformers writes has both (PretrainedConfig.to_dict).
CONFIG_JSON_MARKERS = ("architectures", "model_type")


def _is_config_json(model: dict[str, Any]) -> bool:
    return any(key in model for key in CONFIG_JSON_MARKERS)


def model_fields_from_config(data: dict[str, Any], *, source: str, field: str) -> dict[str, Any]:
    """The ModelSpec fields of a Hugging Face ``config.json`` mapping, read the same way whether it came
    from a file (``config_json: PATH``, ``--model-config``) or was pasted inline under ``model:``. Keys the
    planner does not read (``model_type``, ``torch_dtype``, ``rope_theta``, dropout, token ids, ...) do
    not change memory or cost here; they are kept, sorted, in ``ignored_config_fields`` for the plan's
    notes. ``field`` is the dotted place of the mapping in the scenario (``""`` for a file of its own).

    Raises:
        ScenarioError: an unsupported ``architectures`` value, or layer patterns (``decoder_sparse_step``
            > 1, ``mlp_only_layers``) the planner does not model.
    """
    where = f"{field}." if field else ""
    archs = data.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ScenarioError(
            f"architectures={str(archs)[:200]} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}",
            source=source,
            field=f"{where}architectures",
        )
    if data.get("decoder_sparse_step", 1) not in (1, None) or data.get("mlp_only_layers"):
        raise ScenarioError(
            "interleaved dense/MoE layers (decoder_sparse_step > 1 or mlp_only_layers) are not modelled",
            source=source,
            field=f"{where}decoder_sparse_step",
        )
    known = (set(ModelSpec.model_fields) - {"ignored_config_fields"}) | {"num_local_experts", "n_routed_experts"}
    fields = {k: v for k, v in data.items() if k in known and v is not None}
    fields["architecture"] = arch
    if "name" not in fields and isinstance(data.get("_name_or_path"), str) and data["_name_or_path"]:
        fields["name"] = data["_name_or_path"]
    elif "name" not in fields and field:  # pasted inline without a name: the architecture names the model
        fields["name"] = arch
    checked = {"architectures", "decoder_sparse_step", "mlp_only_layers"}  # read above: refused unless plain
    fields["ignored_config_fields"] = tuple(sorted(str(k) for k in data if k not in known and k not in checked))
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
            shown = repr(given)
            message += f" (got {shown if len(shown) <= 120 else shown[:100] + f'... ({len(shown):,} characters)'})"
        problems.append((field, message))
    first_field, first_message = problems[0]
    more = "".join(f"; {f}: {m}" for f, m in problems[1:])
    return ScenarioError(first_message + more, source=source, field=first_field)


def _kind(value: Any) -> str:
    return "an empty file" if value is None else f"a {type(value).__name__}"


# --- a scenario from one command line -----------------------------------------------------------------------------

# The defaults of a one-line question (``optimize --model M --gpu G --gpus N --isl I --osl O``), each what a
# user of vLLM or NVIDIA's aiconfigurator would assume; ``--print-scenario`` shows them written out.
ONE_LINE_DEFAULTS = {
    "engine": "vllm",  # the most deployed engine; its own defaults apply (no --enable-expert-parallel)
    "concurrency": 64,  # sequences in flight when the objective does not choose the batch
    "weight_dtype": "bf16",  # the dtype most checkpoints ship in; --weight-dtype fp8 for an FP8 checkpoint
    "gpu_memory_utilization": 0.9,  # vLLM's --gpu-memory-utilization default (read exactly: 9/10)
}


def _seconds(milliseconds: Any) -> int | float | str:
    """``50`` ms -> ``0.05`` s, exactly: a decimal divided by 1000 stays a decimal. Written as the YAML number
    a user would type when that number reads back to the same decimal (``exact_decimal`` reads ``0.05`` as
    1/20), else as a decimal string."""
    value = (Decimal(str(milliseconds)) / 1000).normalize()
    if value == value.to_integral_value():
        return int(value)
    return float(value) if Decimal(repr(float(value))) == value else format(value, "f")


def scenario_from_flags(*, model: str, gpu: str, gpus: int, isl: int, osl: int, gpus_per_node: int | None = None,
                        concurrency: int | None = None, ttft_ms: Any = None, tpot_ms: Any = None, engine: str | None = None,
                        objective: str | None = None, weight_dtype: str | None = None, rate: Any = None) -> dict[str, Any]:
    """A scenario mapping (the YAML a user would write) from one command line, with ``ONE_LINE_DEFAULTS``.

    ``model`` is a catalog name, a Hugging Face repo id, or a path to a ``config.json``; ``gpu`` a catalog
    GPU in any spelling the catalog knows. ``gpus`` is the total: nodes of the catalog's ``gpus_per_node``
    (8 for HGX-class GPUs), or one node when fewer. ``ttft_ms`` / ``tpot_ms`` are targets in
    milliseconds (decimal strings are read exactly). The objective, unless given, is the highest output
    tokens/s per GPU within the targets (the batch chosen, as aiconfigurator ranks) when a TTFT or TPOT
    target is given, else the lowest request latency at ``concurrency`` sequences.

    Raises:
        ScenarioError: an unknown GPU or model (with the closest names), or a GPU count that is not whole
            nodes; the field is the flag (``--gpus``).
    """
    source = "<command line>"
    entry = catalog.gpu_entry(gpu)
    if entry is None:
        raise ScenarioError(f"unknown GPU {gpu!r}{catalog.did_you_mean(gpu, catalog.gpu_names())}; known: "
                            f"{', '.join(catalog.gpu_names())}", source=source, field="--gpu")
    per_node = gpus_per_node or min(gpus, int(entry.get("gpus_per_node") or gpus))
    if gpus % per_node:
        raise ScenarioError(f"{gpus} GPUs are not whole nodes of {per_node}; give a multiple of {per_node} or "
                            "--gpus-per-node", source=source, field="--gpus")
    model_value: Any = model
    if Path(model).suffix == ".json" or Path(model).is_file():
        model_value = {"config_json": str(Path(model).resolve())}
    elif catalog.model_entry(model) is None:
        raise ScenarioError(f"unknown model {model!r}{catalog.did_you_mean(model, catalog.model_names())}; give a catalog "
                            "name, a Hugging Face repo id the catalog lists, or a config.json path", source=source,
                            field="--model")
    targets: dict[str, Any] = {}
    if ttft_ms is not None:
        targets["ttft_s"] = _seconds(ttft_ms)
    if tpot_ms is not None:
        targets["tpot_s"] = _seconds(tpot_ms)
    if rate is not None:
        targets["request_rate_per_s"] = str(rate)
    if objective is None:
        objective = (Objective.THROUGHPUT_PER_GPU if targets.keys() & {"ttft_s", "tpot_s"} else Objective.REQUEST_LATENCY).value
    short = (model_value if isinstance(model_value, str) else Path(model).parent.name or "model").split("/")[-1]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{short}-{gpus}x{entry['name']}").lower()
    return {
        "name": name,
        "description": f"{short} on {gpus} x {entry['name']}, ISL {isl} / OSL {osl} (built from the command line)",
        "cluster": {"gpu": entry["name"], "num_nodes": gpus // per_node, "gpus_per_node": per_node},
        "model": model_value,
        "workload": {"concurrent_sequences": concurrency or ONE_LINE_DEFAULTS["concurrency"], "input_tokens": isl,
                     "output_tokens": osl, "weight_dtype": weight_dtype or ONE_LINE_DEFAULTS["weight_dtype"],
                     "kv_cache_dtype": "bf16"},
        "targets": targets,
        "engine": {"name": engine or ONE_LINE_DEFAULTS["engine"]},
        "search": {"objective": objective, "gpu_memory_utilization": ONE_LINE_DEFAULTS["gpu_memory_utilization"]},
    }


def read_calibration_file(path: Path) -> dict[str, Any]:
    """A serving calibration file (``optimize calibrate --out``; ``inputs/calibration_file.py``), read
    strictly (``read_mapping``) and checked field by field.

    Raises:
        ScenarioError: unreadable, not a mapping, or a field missing or malformed (the file and field named).
    """
    return calibration_data(read_mapping(path), source=str(path))
