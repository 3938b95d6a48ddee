"""GPUs and models known by name. Data lives in ``gpus.yaml`` and ``models.yaml`` beside this file, each
entry with its source (copied from the project's reference facts; see the ``source`` fields)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

# Keys of a GPU entry that are cluster defaults rather than GpuSpec fields.
CLUSTER_DEFAULT_KEYS = ("gpus_per_node", "intra_node_link", "inter_node_link")


@cache
def _load(filename: str) -> dict[str, dict[str, Any]]:
    text = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def gpu_names() -> list[str]:
    return sorted(_load("gpus.yaml"))


def model_names() -> list[str]:
    return sorted(_load("models.yaml"))


def gpu_entry(name: str) -> dict[str, Any] | None:
    """The catalog entry for GPU ``name`` (a fresh dict, safe to modify), or None if unknown."""
    entry = _load("gpus.yaml").get(name)
    return None if entry is None else {"name": name, **entry}


def model_entry(name: str) -> dict[str, Any] | None:
    """The Hugging Face config fields of model ``name`` (a fresh dict), or None if unknown."""
    entry = _load("models.yaml").get(name)
    return None if entry is None else {"name": name, **entry}


def calibration_data() -> dict[str, Any]:
    """The fitted cost-model parameters (``calibration.yaml``, written by ``scripts/calibrate.py``)."""
    return _load("calibration.yaml")
