"""The catalog and the shipped scenarios: every entry loads, and parameter counts match what is published."""

from __future__ import annotations

from decimal import Decimal

import pytest

from conftest import BASE
from optimizer.inputs import catalog
from optimizer.inputs.loader import load_scenario, scenario_from_dict, shipped_scenarios
from optimizer.model.memory import total_params
from optimizer.inputs.scenario import Cluster, ModelSpec, Scenario


def published_range(text: str) -> tuple[Decimal, Decimal]:
    """``"46.7B"`` -> [46.65e9, 46.75e9): every count that rounds to the published figure."""
    assert text.endswith("B"), text
    value = Decimal(text[:-1])
    half = Decimal(1).scaleb(value.as_tuple().exponent) / 2
    return (value - half) * 10**9, (value + half) * 10**9


def test_published_range():
    assert published_range("46.7B") == (Decimal("46.65e9"), Decimal("46.75e9"))
    assert published_range("141B") == (Decimal("140.5e9"), Decimal("141.5e9"))
    assert published_range("8.03B") == (Decimal("8.025e9"), Decimal("8.035e9"))


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
