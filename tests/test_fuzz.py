"""Fuzzing the command line through click's CliRunner. The promise under test: whatever a scenario or plan
file holds, ``optimize`` exits 0, 1 or 2 and never shows a traceback; inputs built to be valid never exit 2
(a plan, or a verdict that none exists); inputs built to be broken exit 2 with an ``error:`` line that
names the file.

Every case writes its own file under one folder per module and runs the CLI in process. The example counts
are fixed and the generation derandomised, so CI runs the same 900 cases every time; set
``OPTIMIZER_FUZZ_SCALE=10`` for ten times as many, ``OPTIMIZER_FUZZ_RANDOM=1`` for fresh inputs each run.
Crashes this suite found are pinned at the end as minimal reproducers.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import json
import os
import re
import string
import traceback
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer.inputs import catalog
from optimizer.search import verify as verify_module
from optimizer.cli import main
from optimizer.inputs.loader import shipped_scenarios
from optimizer.inputs.scenario import Dtype, EngineName, Objective

from conftest import BASE

# click < 8.2 mixes stderr into stdout unless told not to; 8.2 dropped the argument and keeps both apart.
RUNNER = CliRunner(mix_stderr=False) if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else CliRunner()

SCALE = max(1, int(os.environ.get("OPTIMIZER_FUZZ_SCALE", "1")))
RANDOM = os.environ.get("OPTIMIZER_FUZZ_RANDOM") == "1"  # fresh inputs every run (local exploration only)


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=not RANDOM,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- running the CLI and judging what it did ---------------------------------------------------------------

_counter = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def write(folder: Path, content: str | bytes, suffix: str = ".yaml") -> Path:
    """A fresh file per case, so no case reads another's leftovers."""
    path = folder / f"case{next(_counter)}{suffix}"
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def invoke(args: list[str]) -> Result:
    return RUNNER.invoke(main, args)


def describe(result: Result, args: list[str], content: Any = None) -> str:
    shown = repr(content)
    if len(shown) > 2000:
        shown = shown[:2000] + "..."
    trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
    return (f"\nargs: {args}\nexit code: {result.exit_code}\ninput: {shown}\n--- stdout ---\n{result.stdout}"
            f"\n--- stderr ---\n{result.stderr}\n--- exception ---\n{trace}")


def assert_no_crash(result: Result, args: list[str], content: Any = None) -> None:
    """The promise for every input: exit 0, 1 or 2, no uncaught exception, no traceback printed."""
    why = describe(result, args, content)
    assert result.exception is None or isinstance(result.exception, SystemExit), "uncaught exception" + why
    assert result.exit_code in (0, 1, 2), "exit code outside 0/1/2" + why
    assert "Traceback" not in result.output and "Traceback" not in result.stderr, "traceback printed" + why


def assert_valid_outcome(result: Result, args: list[str], content: Any = None, *, table: str) -> None:
    """A valid input gets a plan (0, with its table) or a verdict that none exists (1), never 'bad input'."""
    assert_no_crash(result, args, content)
    why = describe(result, args, content)
    assert result.exit_code in (0, 1), "a valid input was rejected as bad input" + why
    if result.exit_code == 0 and isinstance(content, dict) and content.get("search", {}).get("objective") == "fewest_gpus":
        assert "Fewest GPUs for" in result.stdout and "winner:" in result.stdout, "exit 0 without a capacity answer" + why
    elif result.exit_code == 0:
        assert table in result.stdout and "TP " in result.stdout, "exit 0 without a plan table" + why
    else:
        assert not result.stderr.startswith("error:"), "exit 1 reported as bad input" + why


def assert_rejected(result: Result, args: list[str], content: Any, *, names: tuple[str, ...], hint: str | None = None) -> None:
    """A broken input: exit 2, an ``error:`` line naming the file (any of ``names``) and, if given, ``hint``."""
    assert_no_crash(result, args, content)
    why = describe(result, args, content)
    assert result.exit_code == 2, "a broken input was not rejected with exit 2" + why
    assert result.stderr.startswith("error:"), "the message does not start with 'error:'" + why
    assert any(name in result.stderr for name in names), f"the message names none of {names}" + why
    if hint is not None:
        assert hint in result.stderr, f"the message does not mention {hint!r}" + why


# --- valid scenarios ---------------------------------------------------------------------------------------

SHIPPED = {name: yaml.safe_load(path.read_text()) for name, path in shipped_scenarios().items()}
INLINE_GPUS = [SHIPPED["16gpu-30b"]["cluster"]["gpu"], SHIPPED["3gpu-32gb"]["cluster"]["gpu"], BASE["cluster"]["gpu"]]
LINKS = [
    (SHIPPED["16gpu-30b"]["cluster"]["intra_node_link"], SHIPPED["16gpu-30b"]["cluster"]["inter_node_link"]),
    (SHIPPED["3gpu-32gb"]["cluster"]["intra_node_link"], SHIPPED["3gpu-32gb"]["cluster"]["inter_node_link"]),
]
# Inline models: every field spelled out, none of them a catalog name.
INLINE_MODELS = [SHIPPED[name]["model"] for name in ("16gpu-30b", "4gpu-10b", "128gpu-64e")] + [BASE["model"]]
CATALOG_MODELS = catalog.model_names()
SMALL_MODELS = ["Llama-3.1-8B", "Qwen3-30B-A3B", "Mixtral-8x7B-v0.1", "gpt-oss-20b", "DeepSeek-V2-Lite"]
PRIMES = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61]


@st.composite
def cluster_shapes(draw) -> tuple[int, int]:
    """(nodes, GPUs per node): 1..64 GPUs, 1..8 per node; primes (one node of p, or p nodes of one) on purpose."""
    if draw(st.integers(0, 3)) == 0:
        prime = draw(st.sampled_from(PRIMES))
        return draw(st.sampled_from([(prime, 1)] + ([(1, prime)] if prime <= 8 else [])))
    per_node = draw(st.sampled_from([8, 4, 2, 1, 3, 5, 6, 7]))
    return draw(st.integers(1, 64 // per_node)), per_node


@st.composite
def clusters(draw) -> dict[str, Any]:
    nodes, per_node = draw(cluster_shapes())
    cluster: dict[str, Any] = {"num_nodes": nodes, "gpus_per_node": per_node}
    kind = draw(st.sampled_from(["catalog", "catalog-override", "inline"]))
    if kind == "inline":
        cluster["gpu"] = copy.deepcopy(draw(st.sampled_from(INLINE_GPUS)))
        intra, inter = draw(st.sampled_from(LINKS))
        cluster["intra_node_link"], cluster["inter_node_link"] = copy.deepcopy(intra), copy.deepcopy(inter)
    else:
        name = draw(st.sampled_from(catalog.gpu_names()))
        cluster["gpu"] = name if kind == "catalog" else {"name": name, "memory_bytes": draw(st.integers(16, 256)) * 10**9}
        if draw(st.booleans()):
            intra, inter = draw(st.sampled_from(LINKS))
            cluster["intra_node_link"] = copy.deepcopy(intra)
    if draw(st.booleans()):
        cluster["allow_tp_across_nodes"] = draw(st.booleans())
    return cluster


@st.composite
def models(draw) -> str | dict[str, Any]:
    kind = draw(st.sampled_from(["catalog", "small", "catalog-override", "inline", "inline-layers"]))
    if kind == "catalog":
        return draw(st.sampled_from(CATALOG_MODELS))
    if kind == "small":
        return draw(st.sampled_from(SMALL_MODELS))
    if kind == "catalog-override":
        return {"name": draw(st.sampled_from(SMALL_MODELS)), "num_hidden_layers": draw(st.integers(8, 64))}
    model = copy.deepcopy(draw(st.sampled_from(INLINE_MODELS)))
    if kind == "inline-layers":
        model["num_hidden_layers"] = draw(st.integers(max(1, model.get("first_k_dense_replace", 0)), 64))
    return model


positive_decimals = st.one_of(
    st.floats(min_value=0.001, max_value=1000, allow_nan=False, allow_infinity=False),
    st.integers(1, 100),
    st.sampled_from(["0.05", "1/20", "2", "0.5", 1e300, 1e-300, 10**30]),
)


@st.composite
def workloads(draw) -> dict[str, Any]:
    workload: dict[str, Any] = {
        "concurrent_sequences": draw(st.one_of(st.integers(1, 512), st.sampled_from([1, 2, 3, 4096]))),
        "input_tokens": draw(st.one_of(st.integers(1, 8192), st.sampled_from([1, 32768]))),
        "output_tokens": draw(st.one_of(st.integers(0, 2048), st.just(0))),
    }
    dtypes = st.sampled_from([d.value for d in Dtype])
    for key in ("weight_dtype", "expert_weight_dtype", "kv_cache_dtype"):
        if draw(st.booleans()):
            workload[key] = draw(dtypes)
    return workload


@st.composite
def engines(draw) -> dict[str, Any]:
    engine: dict[str, Any] = {"name": draw(st.sampled_from([e.value for e in EngineName]))}
    if draw(st.booleans()):
        engine["enable_expert_parallel"] = draw(st.booleans())
    if draw(st.booleans()):
        engine["max_num_batched_tokens"] = draw(st.integers(1, 65536))
    if draw(st.booleans()):
        engine["reserve_bytes"] = draw(st.integers(0, 8 << 30))
    return engine


@st.composite
def searches(draw) -> dict[str, Any]:
    search: dict[str, Any] = {"objective": draw(st.sampled_from([o.value for o in Objective]))}
    if draw(st.booleans()):  # not much below 0.5: a cap under the runtime reserve costs a ~9 s conflict search
        search["gpu_memory_utilization"] = draw(st.one_of(
            st.floats(min_value=0.5, max_value=1.0, allow_nan=False), st.sampled_from([1, "9/10", "0.8", 0.3])))
    if draw(st.booleans()):
        search["allow_uneven_layers"] = draw(st.booleans())
    return search


SMALL_SHIPPED = ["16gpu-30b", "3gpu-32gb", "4gpu-10b", "mixtral-8x7b-8xh100", "llama-3.1-70b-8xh100",
                 "qwen3-30b-a3b-8xh100", "gpt-oss-120b-8xh100"]


@st.composite
def valid_scenarios(draw) -> dict[str, Any]:
    """Half the time a shipped scenario on another cluster shape (its workload, targets, engine and search
    kept or redrawn); else one put together from catalog and inline GPUs and models."""
    if draw(st.booleans()):
        doc = copy.deepcopy(SHIPPED[draw(st.sampled_from(SMALL_SHIPPED))])
        doc["cluster"]["num_nodes"], doc["cluster"]["gpus_per_node"] = draw(cluster_shapes())
        if draw(st.booleans()):
            doc["workload"] = draw(workloads())
        if draw(st.integers(0, 2)):  # two thirds of the time: its targets would cost a conflict search (~2 s)
            doc.pop("targets", None)
        for section, strategy in (("engine", engines()), ("search", searches())):
            if draw(st.booleans()):
                doc[section] = draw(strategy)
        return _with_rate(doc, draw)
    doc = {"cluster": draw(clusters()), "model": draw(models()), "workload": draw(workloads())}
    if draw(st.booleans()):
        doc["name"] = draw(st.text(min_size=1, max_size=20))
    if draw(st.booleans()):
        doc["description"] = draw(st.text(max_size=40))
    if draw(st.integers(0, 2)) == 0:  # a third of the time: a target that misses costs a conflict search (~2 s)
        names = draw(st.sets(st.sampled_from(["ttft_s", "tpot_s", "output_tokens_per_s"]), max_size=2))
        doc["targets"] = {name: draw(positive_decimals) for name in sorted(names)}
    for section, strategy in (("engine", engines()), ("search", searches())):
        if draw(st.booleans()):
            doc[section] = draw(strategy)
    return _with_rate(doc, draw)


def _with_rate(doc: dict[str, Any], draw) -> dict[str, Any]:
    """The fewest_gpus objective needs the request rate it carries (without it the scenario is bad input),
    and TensorRT-LLM does not run on AMD Instinct GPUs (refused at load): such a draw gets vLLM instead."""
    if doc.get("search", {}).get("objective") == "fewest_gpus":
        doc.setdefault("targets", {})["request_rate_per_s"] = draw(st.sampled_from([0.5, 2, 20]))
    gpu = doc["cluster"].get("gpu")
    name = gpu.get("name", "") if isinstance(gpu, dict) else str(gpu)
    if doc.get("engine", {}).get("name") == "tensorrt-llm" and catalog.is_amd_instinct(name):
        doc["engine"]["name"] = "vllm"
    return doc


def finite(value: Any) -> bool:
    """No NaN or infinity anywhere in ``value`` (JSON has neither)."""
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return True


def dump(doc: Any, fmt: str) -> tuple[str, str]:
    """``doc`` as JSON or YAML text, and the file suffix; YAML where JSON cannot say a value (.nan, .inf)."""
    if fmt == "json" and finite(doc):
        return json.dumps(doc), ".json"
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), ".yaml"


def num_gpus(doc: dict[str, Any]) -> int:
    return doc["cluster"]["num_nodes"] * doc["cluster"]["gpus_per_node"]


@fuzz_settings(150)
@given(doc=valid_scenarios(), fmt=st.sampled_from(["yaml", "json"]), options=st.data())
def test_valid_scenarios_plan_or_say_infeasible(folder, doc, fmt, options):
    path = write(folder, *dump(doc, fmt))
    # --no-explain: the search for the smallest fix re-solves up to ~40 times; --time-limit: a proof of
    # optimality can take minutes on some of these clusters (see the report); a stopped search still exits 0/1.
    args = ["--scenario", str(path), "--no-explain"]
    if num_gpus(doc) <= 16 and options.draw(st.booleans(), label="exhaustive"):
        args += ["--solver", "exhaustive"]
    else:
        args += ["--time-limit", "1"]
        if options.draw(st.booleans(), label="cp-sat options"):
            args += options.draw(st.sampled_from([["--double-check"], ["--workers", "2"], ["--require-proof"]]),
                                 label="option")
    out = path.with_suffix(".plan.json")
    roundtrip = options.draw(st.booleans(), label="verify the plan") and doc.get("search", {}).get("objective") != "fewest_gpus"
    if roundtrip:
        args += ["--json", str(out), "--markdown", str(path.with_suffix(".md"))]
    result = invoke(args)
    assert_valid_outcome(result, args, doc, table="Plan for")
    if roundtrip and result.exit_code == 0:
        verify_args = ["verify", str(out), "--scenario", str(path)]
        verdict = invoke(verify_args)
        assert_valid_outcome(verdict, verify_args, doc, table="Verified plan")
        assert verdict.exit_code == 0, "the optimizer's own plan does not verify" + describe(verdict, verify_args, doc)


# --- broken scenarios: one guaranteed fault in an otherwise valid document ---------------------------------

# Integer fields that are never optional, with the largest value they accept (None: unbounded) and whether
# 0 is accepted; (section, field) with section "gpu" for cluster.gpu.
INT_FIELDS: dict[tuple[str, str], tuple[int | None, bool]] = {
    ("cluster", "num_nodes"): (1 << 16, False),
    ("cluster", "gpus_per_node"): (1 << 10, False),
    ("workload", "concurrent_sequences"): (1 << 24, False),
    ("workload", "input_tokens"): (1 << 24, False),
    ("workload", "output_tokens"): (1 << 24, True),
    ("engine", "max_num_batched_tokens"): (None, False),
    ("engine", "reserve_bytes"): (None, True),
    ("engine", "cuda_graph_bytes"): (None, True),
    ("engine", "comm_buffer_bytes"): (None, True),
    ("gpu", "memory_bytes"): (None, False),
    ("gpu", "hbm_bytes_per_s"): (None, False),
    ("model", "num_hidden_layers"): (None, False),
    ("model", "hidden_size"): (None, False),
    ("model", "num_attention_heads"): (None, False),
    ("model", "vocab_size"): (None, False),
    ("model", "intermediate_size"): (None, True),
    ("model", "num_experts_per_tok"): (None, True),
    ("model", "n_shared_experts"): (None, True),
}
OPTIONAL_INT_FIELDS = [("model", f) for f in ("num_key_value_heads", "head_dim", "moe_intermediate_size")]
REQUIRED = ["cluster", "model", "workload", "cluster.gpu", "cluster.num_nodes", "workload.concurrent_sequences",
            "workload.input_tokens", "workload.output_tokens"]
INLINE_GPU_REQUIRED = ["cluster.gpus_per_node", "cluster.intra_node_link", "cluster.inter_node_link",
                       "cluster.gpu.memory_bytes", "cluster.gpu.hbm_bytes_per_s", "cluster.gpu.dense_tflops",
                       "cluster.intra_node_link.bandwidth_bytes_per_s", "cluster.inter_node_link.latency_us"]
INLINE_MODEL_REQUIRED = ["model.num_hidden_layers", "model.hidden_size", "model.intermediate_size",
                         "model.num_attention_heads", "model.vocab_size"]
# Every key each section accepts (aliases included), so that an invented key is surely unknown.
SECTION_KEYS = {
    "": {"name", "description", "cluster", "model", "workload", "targets", "engine", "search"},
    "cluster": {"gpu", "num_nodes", "gpus_per_node", "intra_node_link", "inter_node_link", "allow_tp_across_nodes"},
    "model": {"name", "architecture", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size", "num_experts", "num_local_experts", "n_routed_experts",
              "num_experts_per_tok", "moe_intermediate_size", "n_shared_experts", "shared_expert_intermediate_size",
              "first_k_dense_replace", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim",
              "v_head_dim", "tie_word_embeddings", "attention_bias", "sliding_window", "layer_types", "use_sliding_window",
              "source", "published_params", "config_json"},
    "workload": {"concurrent_sequences", "input_tokens", "output_tokens", "weight_dtype", "expert_weight_dtype",
                 "kv_cache_dtype", "routing_imbalance"},
    "targets": {"ttft_s", "tpot_s", "output_tokens_per_s", "request_rate_per_s"},
    "engine": {"name", "enable_expert_parallel", "max_num_batched_tokens", "reserve_bytes", "cuda_graph_bytes",
               "comm_buffer_bytes", "calibration_stack", "calibration_file"},
    "search": {"objective", "gpu_memory_utilization", "allow_uneven_layers"},
    "gpu": {"name", "memory_bytes", "hbm_bytes_per_s", "dense_tflops", "source", "gpus_per_node", "intra_node_link",
            "inter_node_link"},
}

# Text with no digits in it: pydantic reads "12" as 12, so a wrong-type string must not look like a number.
words = st.text(st.characters(blacklist_categories=("Cs", "Nd", "No", "Nl")), min_size=0, max_size=12).filter(
    lambda s: not re.search(r"\d", s))
not_integers = st.one_of(
    words,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.booleans(),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.5, -2.5, 1e-300]),
    st.floats(min_value=-1e6, max_value=1e6).filter(lambda f: f != int(f)),
)
bad_fractions = st.one_of(  # for targets and gpu_memory_utilization: never a positive finite number (None: no target)
    st.sampled_from([0, 0.0, -1, -0.05, "-1/2", "fast", "", "nan", "inf", float("nan"), float("inf"), float("-inf"),
                     True, False, [0.5], {"value": 1}]),
    st.integers(max_value=0),
    st.floats(max_value=0, allow_nan=False),
    words.filter(lambda s: s.strip().lower() not in ("", "inf", "nan", "infinity")),
)


def section_of(doc: dict[str, Any], section: str) -> dict[str, Any]:
    """The dict of ``section`` in ``doc``, turning a catalog name into ``{name: X}`` so a field can be set."""
    if section == "":
        return doc
    if section == "gpu":
        cluster = doc["cluster"]
        if isinstance(cluster["gpu"], str):
            cluster["gpu"] = {"name": cluster["gpu"]}
        return cluster["gpu"]
    if section == "model" and isinstance(doc["model"], str):
        doc["model"] = {"name": doc["model"]}
    return doc.setdefault(section, {})


def delete(doc: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = doc
    for key in parents:
        node = node[key]
    del node[last]


def is_inline(value: Any, names: list[str]) -> bool:
    return isinstance(value, dict) and value.get("name") not in names


@st.composite
def broken_scenarios(draw) -> tuple[dict[str, Any] | str, str | None]:
    """A valid document with one fault that must make it invalid, and a text the error must mention."""
    doc = draw(valid_scenarios())
    fault = draw(st.sampled_from(["missing", "not-integer", "not-positive", "too-large", "optional-not-integer",
                                  "unknown-key", "unknown-name", "bad-fraction", "bad-link", "bad-tflops",
                                  "not-a-mapping", "inconsistent-model", "bad-name", "config-json"]))
    if fault == "missing":
        paths = list(REQUIRED)
        if is_inline(doc["cluster"]["gpu"], catalog.gpu_names()) and "intra_node_link" in doc["cluster"]:
            paths += INLINE_GPU_REQUIRED
        if is_inline(doc["model"], CATALOG_MODELS):
            paths += INLINE_MODEL_REQUIRED
        dotted = draw(st.sampled_from(paths))
        if "inter_node_link" not in doc["cluster"] and dotted.startswith("cluster.inter_node_link."):
            dotted = "cluster.inter_node_link"
        delete(doc, dotted)
        return doc, dotted.split(".")[-1]
    if fault in ("not-integer", "not-positive", "too-large"):
        fields = [f for f, (cap, _) in INT_FIELDS.items() if fault != "too-large" or cap is not None]
        section, field = draw(st.sampled_from(fields))
        cap, zero_ok = INT_FIELDS[(section, field)]
        if fault == "not-integer":
            value = draw(st.one_of(not_integers, st.none()))
        elif fault == "not-positive":
            value = draw(st.one_of(st.integers(max_value=-1 if zero_ok else 0),
                                   st.sampled_from([-(10**30), -(2**63)] + ([] if zero_ok else [0]))))
        else:
            value = draw(st.one_of(st.integers(min_value=cap + 1), st.sampled_from([cap + 1, 2**63, 2**64, 10**30])))
        section_of(doc, section)[field] = value
        return doc, field
    if fault == "optional-not-integer":
        section, field = draw(st.sampled_from(OPTIONAL_INT_FIELDS))
        section_of(doc, section)[field] = draw(st.one_of(not_integers, st.integers(max_value=0)))
        return doc, field
    if fault == "unknown-key":
        section = draw(st.sampled_from(sorted(SECTION_KEYS)))
        key = draw(st.one_of(
            st.sampled_from(["num_gpus", "gpu_per_node", "hidden", "tp", "tensor_parallel_size", "bogus", "Name",
                             "num_layers", "batch_size", "dtype", "objective_", "ttft", "nonsense_field"]),
            st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=15),
        ).filter(lambda k: k not in SECTION_KEYS[section]))
        section_of(doc, section)[key] = draw(st.one_of(st.integers(), words, st.none()))
        return doc, None  # the key may be printed with escapes; the field path is checked elsewhere
    if fault == "unknown-name":
        target = draw(st.sampled_from(["gpu", "model", "weight_dtype", "kv_cache_dtype", "engine", "objective"]))
        name = draw(st.one_of(st.sampled_from(["h999", "NoSuchModel", "bf17", "fp3", "trt-llm", "latency", ""]),
                              words.map(lambda w: "x-" + w)))
        if target == "gpu":
            doc["cluster"]["gpu"] = name
            return doc, "cluster.gpu"
        if target == "model":
            doc["model"] = name
            return doc, "model"
        if target == "engine":
            section_of(doc, "engine")["name"] = name
            return doc, "engine.name"
        if target == "objective":
            section_of(doc, "search")["objective"] = name
            return doc, "search.objective"
        doc["workload"][target] = name
        return doc, f"workload.{target}"
    if fault == "bad-fraction":
        target = draw(st.sampled_from(["ttft_s", "tpot_s", "output_tokens_per_s", "gpu_memory_utilization"]))
        value = draw(bad_fractions if target != "gpu_memory_utilization" else
                     st.one_of(bad_fractions, st.sampled_from([1.5, 2, 10**30, "3/2", 1.0000001, None])))
        section_of(doc, "search" if target == "gpu_memory_utilization" else "targets")[target] = value
        return doc, target
    if fault == "bad-link":
        which = draw(st.sampled_from(["intra_node_link", "inter_node_link"]))
        link = draw(st.sampled_from([
            {"bandwidth_bytes_per_s": 0, "latency_us": 3.0},
            {"bandwidth_bytes_per_s": -5, "latency_us": 3.0},
            {"bandwidth_bytes_per_s": 50e9 + 0.5, "latency_us": 3.0},
            {"bandwidth_bytes_per_s": 50_000_000_000, "latency_us": -1},
            {"bandwidth_bytes_per_s": 50_000_000_000, "latency_us": float("nan")},
            {"bandwidth_bytes_per_s": 50_000_000_000, "latency_us": float("inf")},
            {"bandwidth_bytes_per_s": 50_000_000_000, "latency_us": "fast"},
            {"bandwidth_bytes_per_s": 50_000_000_000, "latency_us": True},
            {"bandwidth_bytes_per_s": True, "latency_us": 3.0},
            {"bandwidth_bytes_per_s": 50_000_000_000},
            {"bandwidth_bytes_per_s": 50_000_000_000, "latency_us": 3.0, "jitter_us": 1},
            "nvlink", 450, [450, 3], None,
        ]))
        doc["cluster"][which] = link
        return doc, f"cluster.{which}"
    if fault == "bad-tflops":
        section_of(doc, "gpu")["dense_tflops"] = draw(st.sampled_from([
            {"bf16": 0}, {"bf16": -1}, {"fp8": 100}, {}, {"bf16": float("inf")}, {"bf16": float("nan")},
            {"bf16": "fast"}, {"bf16": True}, {"bf16": 400, "fp2": 9}, {"bf16": None}, [400], 400, "400", None,
        ]))
        return doc, "dense_tflops"
    if fault == "not-a-mapping":
        section = draw(st.sampled_from(["cluster", "workload", "targets", "engine", "search", "gpu", "model"]))
        value = draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=3), st.none(), st.booleans(),
                               st.floats(allow_nan=False)))
        if section == "gpu":
            doc["cluster"]["gpu"] = value
            return doc, "cluster.gpu"
        doc[section] = value
        return doc, section
    if fault == "inconsistent-model":
        model = section_of(doc, "model")
        entry = {**(catalog.model_entry(model["name"]) or {}), **model} if isinstance(model.get("name"), str) else model
        experts = entry.get("num_experts", entry.get("num_local_experts", entry.get("n_routed_experts", 0)))
        heads = entry["num_attention_heads"]
        change = draw(st.sampled_from(["top-k", "dense-layers", "kv-heads"]))
        if change == "top-k":
            model["num_experts_per_tok"] = experts + draw(st.integers(1, 8))
            return doc, "num_experts_per_tok"
        if change == "dense-layers":
            model["first_k_dense_replace"] = entry["num_hidden_layers"] + draw(st.integers(1, 8))
            return doc, "first_k_dense_replace"
        if entry.get("kv_lora_rank") is not None:  # MLA has no KV heads to break: break top-k instead
            model["num_experts_per_tok"] = experts + 1
            return doc, "num_experts_per_tok"
        model["num_key_value_heads"] = draw(st.integers(1, 4 * heads).filter(lambda kv: kv > heads or heads % kv))
        return doc, "num_key_value_heads"
    if fault == "bad-name":
        doc["name"] = draw(st.sampled_from(["", [1, 2], {"a": 1}, 5, True, None]))
        return doc, "name"
    # config-json: a model read from a config.json that is missing, not a file, or not a config
    doc["model"] = {"config_json": draw(st.sampled_from(["missing-config.json", ".", "/", 5, [1]]))}
    return doc, "model.config_json"


@fuzz_settings(250)
@given(case=broken_scenarios(), fmt=st.sampled_from(["yaml", "json"]))
def test_broken_scenarios_exit_2_naming_file_and_field(folder, case, fmt):
    doc, hint = case
    path = write(folder, *dump(doc, fmt))
    args = ["--scenario", str(path), "--no-explain"]
    assert_rejected(invoke(args), args, doc, names=(str(path),), hint=hint)


# --- broken files: not YAML, not UTF-8, not a mapping, nested too deep -------------------------------------

BAD_YAML = [
    "cluster: [unclosed\n", "name: \"no closing quote\n", "name: *undefined_alias\n", "a: b: c\n", "{a: 1\n",
    "- a\nb: c\n", "cluster:\n\tnum_nodes: 1\n", "name: !!python/object/apply:os.system [ls]\n", "--- a\n--- b\n",
    "%YAML 9.9\n--- {}\n", "? [a, b]\n: 1\n", "name: @reserved\n", "key: value\n  bad indent: 1\n", "]\n",
    "name: x\nname: [\n",
]
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\x80" * 5, b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"]


def nested(depth: int, kind: str) -> str:
    if kind == "flow-list":
        return "[" * depth + "]" * depth
    if kind == "flow-map":
        return "{a: " * depth + "1" + "}" * depth
    if kind == "block-map":
        return "".join(" " * i + "a:\n" for i in range(depth)) + " " * depth + "1\n"
    return "- " * depth + "1\n"


def parses_to_mapping(content: bytes) -> bool:
    """Would the loader (JSON, else YAML) read ``content`` as a mapping?"""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    for parse in (json.loads, yaml.safe_load):
        try:
            return isinstance(parse(text), dict)
        except (ValueError, yaml.YAMLError, RecursionError):
            continue
    return False


@st.composite
def broken_files(draw) -> tuple[bytes, str | None]:
    """Bytes that can never be a scenario or a plan, and a text the error must contain (or None)."""
    kind = draw(st.sampled_from(["not-mapping", "bad-yaml", "not-utf8", "utf16", "garbage", "text", "deep",
                                 "deep-in-field"]))
    valid = yaml.safe_dump(draw(valid_scenarios()), sort_keys=False)
    if kind == "not-mapping":
        value = draw(st.one_of(st.lists(st.integers(), max_size=4), st.integers(), st.floats(allow_nan=False),
                               st.booleans(), st.none(), st.text(string.ascii_letters + " ", min_size=1, max_size=20),
                               st.just(""), st.just("# just a comment\n"), st.just("---\n")))
        text = value if isinstance(value, str) else yaml.safe_dump(value)
        return text.encode(), "expected a mapping" if value != "" else None
    if kind == "bad-yaml":
        snippet = draw(st.sampled_from(BAD_YAML))
        return (draw(st.sampled_from(["", valid])) + snippet).encode(), "invalid YAML"
    if kind == "not-utf8":
        junk = draw(st.binary(max_size=64))
        at = draw(st.integers(0, len(junk)))
        return junk[:at] + draw(st.sampled_from(INVALID_UTF8)) + junk[at:], "UTF-8"
    if kind == "utf16":
        return valid.encode("utf-16"), "UTF-8"
    if kind == "garbage":  # arbitrary bytes, short of a mapping (`{}` is a plan with every size derived)
        return draw(st.binary(max_size=200).filter(lambda b: not parses_to_mapping(b))), None
    if kind == "text":
        return draw(st.text(max_size=200).map(str.encode).filter(lambda b: not parses_to_mapping(b))), None
    depth = draw(st.one_of(st.integers(1, 400), st.sampled_from([900, 1000, 3000, 20000])))
    shape = draw(st.sampled_from(["flow-list", "flow-map", "block-map", "block-list"]))
    if shape == "block-map":
        depth = min(depth, 1000)  # its indentation grows as depth squared
    if kind == "deep":
        return nested(depth, shape).encode(), None
    field = draw(st.sampled_from(["cluster", "workload", "targets", "name", "tp", "layers_per_stage"]))
    body = nested(depth, shape)
    return (f"{field}:\n" + "".join("  " + line + "\n" for line in body.splitlines())).encode(), None


@fuzz_settings(120)
@given(case=broken_files())
def test_broken_scenario_files_exit_2(folder, case):
    content, hint = case
    path = write(folder, content, ".yaml")
    args = ["--scenario", str(path)]
    assert_rejected(invoke(args), args, content, names=(str(path),), hint=hint)


@fuzz_settings(80)
@given(case=broken_files(), scenario=st.sampled_from(["16gpu-30b", "3gpu-32gb"]))
def test_broken_plan_files_exit_2(folder, case, scenario):
    content, hint = case
    path = write(folder, content, ".yaml")
    args = ["verify", str(path), "--scenario", scenario]
    assert_rejected(invoke(args), args, content, names=(str(path),), hint=hint)


def test_paths_that_are_not_files_exit_2(folder):
    for target in (folder / "no-such-file.yaml", folder, Path("/dev/null")):
        for args in (["--scenario", str(target)], ["verify", str(target), "--scenario", "3gpu-32gb"]):
            result = invoke(args)
            assert_rejected(result, args, None, names=(str(target),))


# --- plan files for `optimize verify` ----------------------------------------------------------------------

SIZE_KEYS = ("tp", "pp", "dp", "ep", "etp", "edp", "batch_per_replica")
# Names people write sizes with (vLLM, SGLang, Megatron-Core, TensorRT-LLM), as `optimize verify --help` says.
PLAN_ALIASES = {
    "tp": ["tp", "tensor_parallel_size", "tensor-parallel-size", "--tensor-parallel-size", "tensor_model_parallel_size",
           "tp_size", "TP"],
    "pp": ["pp", "pipeline_parallel_size", "pipeline-parallel-size", "pipeline_model_parallel_size", "pp_size"],
    "dp": ["dp", "data_parallel_size", "data-parallel-size", "dp_size"],
    "ep": ["ep", "expert_parallel_size", "expert_model_parallel_size", "ep_size"],
    "etp": ["etp", "expert_tensor_parallel_size"],
    "edp": ["edp", "expert_data_parallel_size"],
    "batch_per_replica": ["batch_per_replica", "batch"],
    "layers_per_stage": ["layers_per_stage", "layer_split"],
}
INFORMATIVE = {"instances", "dp_per_instance", "engine", "notes", "plan"}


def normalise(name: object) -> str:
    return str(name).strip().lstrip("-").lower().replace("-", "_")


KNOWN_PLAN_KEYS = ({normalise(a) for aliases in PLAN_ALIASES.values() for a in aliases}
                   | {normalise(a) for aliases in getattr(verify_module, "ALIASES", {}).values() for a in aliases}
                   | INFORMATIVE)
PLAN_SCENARIOS = ["16gpu-30b", "3gpu-32gb", "mixtral-8x7b-8xh100", "llama-3.1-70b-8xh100", "qwen3-30b-a3b-8xh100"]
# tp, pp and dp stay <= 16 each: verify lays out every rank of tp x pp x dp, so a plan for millions of GPUs takes
# minutes (see the report). The expert sizes and the batch are not multiplied out that way.
small_sizes = st.one_of(st.integers(1, 16), st.sampled_from([1, 2, 3, 4, 5, 7, 8, 16]))
sizes = st.one_of(small_sizes, st.integers(17, 4096))


@st.composite
def plan_sizes(draw) -> dict[str, Any]:
    """Well-formed sizes under their canonical names (some absent: verify derives them)."""
    keys = draw(st.sets(st.sampled_from(SIZE_KEYS + ("layers_per_stage",))))
    plan: dict[str, Any] = {}
    for key in sorted(keys):
        if key == "layers_per_stage":
            plan[key] = draw(st.lists(st.integers(0, 200), min_size=1, max_size=64))
        else:
            plan[key] = draw(small_sizes if key in ("tp", "pp", "dp") else sizes)
    return plan


@st.composite
def plan_documents(draw, plan: dict[str, Any]) -> dict[str, Any]:
    """``plan`` with each key under one of its aliases, at the top or inside a plan JSON's ``plan`` object."""
    spelled = {draw(st.sampled_from(PLAN_ALIASES[key])): value for key, value in plan.items()}
    if draw(st.booleans()):
        spelled["notes"] = draw(st.text(max_size=20))
    if draw(st.booleans()):
        return {"schema_version": "3.5", "plan": spelled}
    return spelled


@fuzz_settings(150)
@given(plan=plan_sizes(), data=st.data(), scenario=st.sampled_from(PLAN_SCENARIOS),
       fmt=st.sampled_from(["yaml", "json"]))
def test_well_formed_plans_verify_to_0_or_1(folder, plan, data, scenario, fmt):
    options: list[str] = []
    if plan and data.draw(st.booleans(), label="some sizes as options"):
        key = data.draw(st.sampled_from(sorted(plan)), label="option")
        value = plan.pop(key)
        flag = {"batch_per_replica": "--batch", "layers_per_stage": "--layers"}.get(key, f"--{key}")
        options = [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    doc = data.draw(plan_documents(plan), label="document")
    path = write(folder, *dump(doc, fmt))
    args = ["verify", str(path), "--scenario", scenario, *options]
    assert_valid_outcome(invoke(args), args, doc, table="Verified plan")


@st.composite
def broken_plans(draw) -> tuple[dict[str, Any], str | None]:
    """A well-formed plan with one fault that must make it unreadable, and a text the error must mention."""
    plan = draw(plan_sizes())
    fault = draw(st.sampled_from(["size", "size", "huge", "unknown-key", "twice", "layers"]))
    if fault in ("size", "huge"):
        key = draw(st.sampled_from(SIZE_KEYS))
        if fault == "huge":
            plan[key] = draw(st.one_of(st.integers(min_value=(1 << 24) + 1), st.sampled_from([2**63, 10**30])))
        else:
            plan[key] = draw(st.one_of(st.integers(max_value=0), st.sampled_from([-(2**63), -(10**30)]), not_integers,
                                       st.none(), words.map(lambda w: w + "7"), st.sampled_from(["2", "4.0", 2.0, 1e3])))
        return draw(plan_documents(plan)), None
    if fault == "unknown-key":
        doc = draw(plan_documents(plan))
        key = draw(st.one_of(st.sampled_from(["tensor", "pipeline", "gpus", "replicas", "layers", "bogus", "micro_batch"]),
                             st.text(min_size=1, max_size=15)).filter(lambda k: normalise(k) not in KNOWN_PLAN_KEYS))
        target = doc["plan"] if "plan" in doc else doc
        target[key] = draw(st.one_of(st.integers(1, 8), words))
        return doc, "unknown field"
    if fault == "twice":
        key = draw(st.sampled_from(SIZE_KEYS[:4]))
        first, second = draw(st.lists(st.sampled_from(PLAN_ALIASES[key]), min_size=2, max_size=2, unique_by=normalise))
        doc = draw(plan_documents({k: v for k, v in plan.items() if k != key}))
        target = doc["plan"] if "plan" in doc else doc
        target[first], target[second] = draw(small_sizes), draw(small_sizes)
        return doc, "twice"
    plan["layers_per_stage"] = draw(st.one_of(
        st.just([]),
        st.integers(0, 64), words, st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2),
        st.lists(st.integers(0, 16), min_size=1, max_size=8).flatmap(lambda good: st.tuples(
            st.just(good), st.integers(0, len(good)),
            st.sampled_from([-1, -(10**30), 10**30, (1 << 24) + 1, 1.5, 8.0, True, "8", None, [8], {"a": 1}]))).map(
            lambda t: t[0][:t[1]] + [t[2]] + t[0][t[1]:]),
    ))
    return draw(plan_documents(plan)), "layers_per_stage"


@fuzz_settings(150)
@given(case=broken_plans(), scenario=st.sampled_from(PLAN_SCENARIOS), fmt=st.sampled_from(["yaml", "json"]))
def test_broken_plans_exit_2_naming_file(folder, case, scenario, fmt):
    doc, hint = case
    path = write(folder, *dump(doc, fmt))
    args = ["verify", str(path), "--scenario", scenario]
    assert_rejected(invoke(args), args, doc, names=(str(path),), hint=hint)


# --- regressions: crashes this suite found, pinned as minimal reproducers ------------------------------------


@pytest.mark.parametrize("target", ["ttft_s", "tpot_s"])
def test_a_latency_target_of_1e300_s_is_no_crash(folder, target):
    """Was an OverflowError in the certificate text (rules.py formatted the bound as a float)."""
    doc = copy.deepcopy(SHIPPED["3gpu-32gb"])
    doc["targets"] = {target: 1e300}
    path = write(folder, yaml.safe_dump(doc))
    args = ["--scenario", str(path), "--no-explain"]
    assert_valid_outcome(invoke(args), args, doc, table="Plan for")


def test_a_layer_count_of_1e30_is_bad_input_not_a_crash(folder):
    """Was an OverflowError in cost.py (verify accepted any non-negative layer count)."""
    path = write(folder, "layers_per_stage: [1000000000000000000000000000000]\n")
    args = ["verify", str(path), "--scenario", "3gpu-32gb"]
    assert_rejected(invoke(args), args, None, names=(str(path),), hint="layers_per_stage")


def test_json_with_a_character_beyond_the_bmp_loads(folder):
    """Was exit 2: PyYAML read json.dumps's escaped surrogate pair as two lone surrogates."""
    doc = copy.deepcopy(SHIPPED["3gpu-32gb"])
    doc["name"] = "plan \U0001f680"
    path = write(folder, json.dumps(doc), ".json")
    args = ["--scenario", str(path), "--no-explain"]
    result = invoke(args)
    assert_valid_outcome(result, args, doc, table="Plan for")
    assert "\U0001f680" in result.stdout


@pytest.mark.parametrize("value", ["true", "false"])
@pytest.mark.parametrize("field", ["cluster.num_nodes", "workload.output_tokens", "model.num_key_value_heads",
                                   "cluster.intra_node_link.latency_us"])
def test_true_or_false_is_no_number(folder, field, value):
    """Was accepted as 1 or 0 (pydantic's lax int/float)."""
    doc = copy.deepcopy(SHIPPED["16gpu-30b"])
    *parents, last = field.split(".")
    node = doc
    for key in parents:
        node = node[key]
    node[last] = value == "true"
    path = write(folder, yaml.safe_dump(doc))
    args = ["--scenario", str(path), "--no-explain"]
    assert_rejected(invoke(args), args, doc, names=(str(path),), hint=field)


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_nesting_deeper_than_the_parser_recursion_is_bad_input(folder, depth):
    """Was a RecursionError from PyYAML's recursive parser."""
    path = write(folder, "[" * depth + "]" * depth)
    for args in (["--scenario", str(path)], ["verify", str(path), "--scenario", "3gpu-32gb"]):
        assert_rejected(invoke(args), args, None, names=(str(path),), hint="nested too deeply")
