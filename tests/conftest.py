"""Shared test helpers: a small valid scenario, overridable field by field.

``make_scenario(model={"num_experts": 6})`` deep-merges the override into ``BASE`` and validates the
result with ``scenario_from_dict``. A value of ``None`` in an override sets the field to ``None``.
"""

from __future__ import annotations

import copy
from typing import Any

from optimizer.inputs.loader import scenario_from_dict
from optimizer.inputs.scenario import Scenario

# 2 nodes x 4 GPUs of 64 GB; a tiny MoE (one dense layer first, 8 experts top-2, one shared expert).
BASE: dict[str, Any] = {
    "name": "small-moe",
    "cluster": {
        "gpu": {
            "name": "test-64gb",
            "memory_bytes": 64_000_000_000,
            "hbm_bytes_per_s": 1_800_000_000_000,
            "dense_tflops": {"bf16": 400},
        },
        "num_nodes": 2,
        "gpus_per_node": 4,
        "intra_node_link": {"bandwidth_bytes_per_s": 450_000_000_000, "latency_us": 3},
        "inter_node_link": {"bandwidth_bytes_per_s": 50_000_000_000, "latency_us": 6},
    },
    "model": {
        "name": "tiny-moe",
        "num_hidden_layers": 4,
        "hidden_size": 256,
        "intermediate_size": 512,  # the dense layer's FFN
        "moe_intermediate_size": 256,  # each expert
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 32,
        "vocab_size": 1000,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "shared_expert_intermediate_size": 0,
        "first_k_dense_replace": 1,
        "tie_word_embeddings": False,
        "attention_bias": False,
    },
    "workload": {"concurrent_sequences": 8, "input_tokens": 128, "output_tokens": 64},
    "engine": {"name": "megatron"},
    "search": {"objective": "request_latency", "gpu_memory_utilization": 0.9, "allow_uneven_layers": True},
}

# Override that turns BASE's model into a dense one.
DENSE = {"num_experts": 0, "num_experts_per_tok": 0, "moe_intermediate_size": None, "n_shared_experts": 0,
         "first_k_dense_replace": 0}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` with ``override`` merged in, recursively for nested dicts."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def scenario_dict(**overrides: Any) -> dict[str, Any]:
    return deep_merge(BASE, overrides)


def make_scenario(**overrides: Any) -> Scenario:
    return scenario_from_dict(scenario_dict(**overrides))
