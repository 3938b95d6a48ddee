"""The catalog and the shipped scenarios: every entry loads, and parameter counts match what is published."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from conftest import BASE
from optimizer.inputs import catalog
from optimizer.inputs.loader import load_scenario, scenario_from_dict, shipped_scenarios
from optimizer.model.memory import total_params
from optimizer.inputs.scenario import Cluster, ModelSpec, Scenario


def published_range(text: str) -> tuple[Decimal, Decimal]:
    """``"46.7B"`` -> [46.65e9, 46.8e9): every count that rounds, or truncates, to the published figure.
    Some publishers cut instead of rounding (Meta's "1.23B" for Llama 3.2 1B's 1,235,814,400; Qwen's
    "7.61B" for Qwen2.5-7B's 7.6157e9), so the range runs up to the next figure. ``T`` is 10**12 (Kimi K2's
    "1T")."""
    assert text[-1] in "BT", text
    value, scale = Decimal(text[:-1]), 10 ** (9 if text[-1] == "B" else 12)
    ulp = Decimal(1).scaleb(value.as_tuple().exponent)
    return (value - ulp / 2) * scale, (value + ulp) * scale


def test_published_range():
    assert published_range("46.7B") == (Decimal("46.65e9"), Decimal("46.8e9"))
    assert published_range("141B") == (Decimal("140.5e9"), Decimal("142e9"))
    assert published_range("8.03B") == (Decimal("8.025e9"), Decimal("8.04e9"))
    assert published_range("1T") == (Decimal("0.5e12"), Decimal("2e12"))


@pytest.mark.parametrize("name", catalog.model_names())
def test_model_total_params_match_published(name):
    model = ModelSpec.model_validate(catalog.model_entry(name))
    assert model.published_params, f"{name} has no published_params"
    low, high = published_range(model.published_params)
    total = total_params(model)
    assert low <= total < high, f"{name}: {total:,} parameters, published {model.published_params}"


@pytest.mark.parametrize("name", catalog.gpu_names())
def test_gpu_entry_loads_into_a_cluster(name):
    entry = catalog.gpu_entry(name)
    data = {**BASE, "cluster": {"gpu": name, "num_nodes": 2}}
    cluster = scenario_from_dict(data).cluster
    assert isinstance(cluster, Cluster)
    assert cluster.gpu.name == name
    assert cluster.gpu.memory_bytes == entry["memory_bytes"]
    assert cluster.gpus_per_node == entry["gpus_per_node"]
    assert cluster.num_gpus == 2 * entry["gpus_per_node"]
    assert cluster.intra_node_link.bandwidth_bytes_per_s == entry["intra_node_link"]["bandwidth_bytes_per_s"]


@pytest.mark.parametrize("name", catalog.model_names())
def test_model_entry_loads_by_name_in_a_scenario(name):
    scenario = scenario_from_dict({**BASE, "model": name})
    assert scenario.model.name == name


def test_some_scenarios_are_shipped():
    assert "16gpu-30b" in shipped_scenarios()


@pytest.mark.parametrize("name", sorted(shipped_scenarios()))
def test_shipped_scenario_loads(name):
    scenario = load_scenario(name)
    assert isinstance(scenario, Scenario)
    assert scenario.name == name
    assert scenario.cluster.num_gpus >= 1


# --- coverage (issue 16): the GPUs people deploy now, each with its source -------------------------------------

NEW_GPUS = ("h20", "l4", "a30", "a100-pcie-80gb", "rtx-pro-6000", "b300", "gb200-nvl72", "gb300-nvl72", "mi325x", "mi355x")


def test_catalog_has_at_least_15_gpus_including_the_ones_deployed_now():
    names = catalog.gpu_names()
    assert len(names) >= 15, names
    assert set(NEW_GPUS) <= set(names)


@pytest.mark.parametrize("name", catalog.gpu_names())
def test_every_gpu_names_its_source_and_gives_dense_bf16(name):
    entry = catalog.gpu_entry(name)
    assert len(entry.get("source", "")) > 20, f"{name} has no source"
    assert entry["dense_tflops"]["bf16"] > 0
    # dense figures: FP8 is at most twice BF16 and FP4 at most twice FP8 (a sparse figure would double both)
    tflops = entry["dense_tflops"]
    assert tflops.get("fp8", 0) <= 2.03 * tflops["bf16"]  # 2x, give or take the rounding of published figures
    assert tflops.get("fp4", 0) <= 3.2 * tflops.get("fp8", tflops["bf16"])  # B300: 14 PF FP4 over 4.5 PF FP8


def test_gb200_nvl72_is_one_72_gpu_nvlink_domain():
    entry = catalog.gpu_entry("gb200-nvl72")
    assert entry["gpus_per_node"] == 72
    assert entry["intra_node_link"]["bandwidth_bytes_per_s"] == 900 * 10**9


@pytest.mark.parametrize(("written", "name"), [
    ("GB200", "gb200-nvl72"), ("NVIDIA H20", "h20"), ("NVIDIA L4", "l4"), ("AMD Instinct MI355X", "mi355x"),
    ("RTX PRO 6000 Blackwell", "rtx-pro-6000"), ("B300", "b300"), ("A100 PCIe", "a100-pcie-80gb"),
])
def test_new_gpus_resolve_from_the_names_people_write(written, name):
    assert catalog.gpu_name(written) == name


def test_a_plan_on_an_uncalibrated_gpu_says_so():
    from click.testing import CliRunner

    from optimizer.cli import main

    args = ["--model", "Llama-3.1-8B", "--gpu", "L4", "--gpus", "8", "--isl", "1024", "--osl", "128",
            "--solver", "exhaustive"]
    result = CliRunner().invoke(main, [*args, "--json", "-"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["estimate"]["calibration"]["measured"] is False
    assert any(n.startswith("uncalibrated GPU") and "'l4'" in n for n in doc["plan"]["notes"]), doc["plan"]["notes"]
    calibrated = CliRunner().invoke(main, [*args[:3], "H100", *args[4:], "--json", "-"])
    assert calibrated.exit_code == 0, calibrated.output
    assert not any(n.startswith("uncalibrated GPU") for n in json.loads(calibrated.output)["plan"]["notes"])


# --- coverage (issue 16): models -------------------------------------------------------------------------------

from optimizer.model.memory import active_params  # noqa: E402

# Active parameters as the model cards publish them ("A3B", "37B activated", ...), for the MoE entries: a
# second, independent check on the expert shapes (total_params alone cannot tell a wrong expert width from a
# wrong expert count).
PUBLISHED_ACTIVE = {
    "Mixtral-8x7B-v0.1": "12.9B", "Mixtral-8x22B-v0.1": "39B", "Qwen3-30B-A3B": "3.3B", "Qwen3-235B-A22B": "22B",
    "Qwen3-Coder-480B-A35B-Instruct": "35B", "DeepSeek-V3": "37B", "DeepSeek-R1": "37B", "DeepSeek-V2": "21B",
    "DeepSeek-V2-Lite": "2.4B", "Kimi-K2-Instruct": "32B", "gpt-oss-120b": "5.1B", "gpt-oss-20b": "3.6B",
    "Qwen2-57B-A14B": "14B", "Qwen1.5-MoE-A2.7B": "2.7B", "Llama-4-Maverick-17B-128E-Instruct": "17B",
    "GLM-4.5-Air": "12B", "DeepSeek-V3.1": "37B", "Kimi-K2-Thinking": "32B",
}


def test_catalog_has_at_least_40_models():
    assert len(catalog.model_names()) >= 40, catalog.model_names()


@pytest.mark.parametrize("name", sorted(PUBLISHED_ACTIVE))
def test_moe_active_params_match_published(name):
    """Publishers differ on the input embedding: a table lookup, not a matmul. OpenAI (gpt-oss) and DeepSeek
    (V2-Lite's 2.4B) leave it out of the active count, Qwen and Mistral count it; either reading may match."""
    model = ModelSpec.model_validate(catalog.model_entry(name))
    low, high = published_range(PUBLISHED_ACTIVE[name])
    with_embedding = active_params(model)
    without = with_embedding - model.vocab_size * model.hidden_size
    assert any(low <= n < high for n in (with_embedding, without)), (
        f"{name}: {with_embedding:,} active ({without:,} without the embedding), published {PUBLISHED_ACTIVE[name]}")


@pytest.mark.parametrize("name", catalog.model_names())
def test_every_model_names_its_source(name):
    assert len(catalog.model_entry(name).get("source", "")) > 20


def test_every_moe_in_the_catalog_has_a_published_active_figure():
    moe = {n for n in catalog.model_names() if catalog.model_entry(n).get("num_experts")}
    assert moe <= set(PUBLISHED_ACTIVE), moe - set(PUBLISHED_ACTIVE)


@pytest.mark.parametrize(("name", "sliding"), [
    ("gemma-2-9b", 21), ("gemma-3-1b-it", 22), ("gpt-oss-120b", 18), ("Mistral-7B-v0.1", 32), ("Qwen3-8B", 0),
])
def test_sliding_layers_per_model(name, sliding):
    assert ModelSpec.model_validate(catalog.model_entry(name)).num_sliding_layers == sliding


def test_sliding_window_pattern_marks_every_nth_layer_full():
    base = {**catalog.model_entry("gemma-3-1b-it"), "name": "g"}
    assert ModelSpec.model_validate({**base, "sliding_window_pattern": 2}).num_sliding_layers == 13
    assert ModelSpec.model_validate({**base, "sliding_window_pattern": 1}).num_sliding_layers == 0
    without = {k: v for k, v in base.items() if k != "sliding_window_pattern"}
    assert ModelSpec.model_validate(without).num_sliding_layers == 26  # a bare sliding_window slides everywhere


@pytest.mark.parametrize("gpu", NEW_GPUS)
def test_every_new_gpu_plans_a_small_model_and_says_it_is_uncalibrated(gpu):
    from click.testing import CliRunner

    from optimizer.cli import main

    result = CliRunner().invoke(main, ["--model", "Qwen3-8B", "--gpu", gpu, "--gpus", "4", "--isl", "1024", "--osl", "128",
                                       "--solver", "exhaustive", "--json", "-"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["scenario"]["cluster"]["gpu"]["name"] == gpu
    assert any(n.startswith("uncalibrated GPU") for n in doc["plan"]["notes"])


@pytest.mark.parametrize(("name", "architecture", "model_type"), [
    ("GLM-4.5-Air", "Glm4MoeForCausalLM", "glm4_moe"), ("gemma-3-1b-it", "Gemma3ForCausalLM", "gemma3_text"),
])
def test_a_config_json_of_a_newly_supported_architecture_counts_as_the_catalog(tmp_path, name, architecture, model_type):
    """The fields of a catalog entry written as a Hugging Face config.json (with keys the planner ignores, as
    the real files have) load into the same model: same parameter count, same sliding layers."""
    import yaml

    from optimizer.inputs.loader import load_scenario

    entry = {k: v for k, v in catalog.model_entry(name).items() if k not in ("name", "architecture", "source", "published_params")}
    if "num_experts" in entry:
        entry["n_routed_experts"] = entry.pop("num_experts")
    config = {**entry, "architectures": [architecture], "model_type": model_type,
              "rope_theta": 1000000, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    scenario = {**BASE, "model": {"config_json": "config.json"}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    model = load_scenario(str(tmp_path / "s.yaml")).model
    expected = ModelSpec.model_validate(catalog.model_entry(name))
    assert total_params(model) == total_params(expected)
    assert model.num_sliding_layers == expected.num_sliding_layers
    assert model.num_nextn_predict_layers == expected.num_nextn_predict_layers  # MTP layers are read, not counted
    assert "rope_theta" in model.ignored_config_fields
