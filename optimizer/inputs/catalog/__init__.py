"""GPUs and models known by name. Data lives in ``gpus.yaml`` and ``models.yaml`` beside this file, each
entry with its source (copied from the project's reference facts; see the ``source`` fields)."""

from __future__ import annotations

import re

from functools import cache
from importlib import resources
from typing import Any

import yaml

# Keys of a GPU entry that are cluster defaults rather than GpuSpec fields.
CLUSTER_DEFAULT_KEYS = ("gpus_per_node", "gpus_per_host", "intra_node_link", "inter_node_link")


@cache
def _load(filename: str) -> dict[str, dict[str, Any]]:
    text = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def gpu_names() -> list[str]:
    return sorted(_load("gpus.yaml"))


def model_names() -> list[str]:
    return sorted(_load("models.yaml"))


# GPU names as people write them (vendor pages, nvidia-smi, cloud instance docs), normalised by ``_key``,
# for the catalog entry they mean. The SXM part is the default where a bare name is ambiguous, as in
# NVIDIA's and the clouds' usage (an "H100" in an 8-GPU HGX node is the SXM5 module).
GPU_ALIASES = {
    "h100": "h100-sxm", "h100-sxm5": "h100-sxm", "h100-80gb": "h100-sxm", "h100-sxm5-80gb": "h100-sxm",
    "h100-sxm-80gb": "h100-sxm", "h100-80gb-hbm3": "h100-sxm", "h100-pcie-80gb": "h100-pcie",
    "h200": "h200-sxm", "h200-141gb": "h200-sxm", "h200-sxm-141gb": "h200-sxm", "h200-141gb-hbm3e": "h200-sxm",
    "h800": "h800-sxm", "h800-80gb": "h800-sxm",
    "a100": "a100-sxm-80gb", "a100-80gb": "a100-sxm-80gb", "a100-sxm4-80gb": "a100-sxm-80gb",
    "a100-40gb": "a100-sxm-40gb", "a100-sxm4-40gb": "a100-sxm-40gb",
    "b200-180gb": "b200", "l40s-48gb": "l40s", "instinct-mi300x": "mi300x",
    "h20-96gb": "h20", "l4-24gb": "l4", "a30-24gb": "a30", "a100-pcie": "a100-pcie-80gb",
    "rtx-pro-6000-blackwell": "rtx-pro-6000", "rtx-pro-6000-blackwell-server-edition": "rtx-pro-6000",
    "b300-288gb": "b300", "b300-sxm": "b300", "gb200": "gb200-nvl72", "gb300": "gb300-nvl72",
    "instinct-mi325x": "mi325x", "instinct-mi355x": "mi355x",
}


def _key(name: str) -> str:
    """``NVIDIA H100 SXM5 80GB`` -> ``h100-sxm5-80gb``: lower case, vendor dropped, separators as ``-``."""
    text = name.strip().lower().replace("_", "-").replace(" ", "-")
    for vendor in ("nvidia-", "amd-"):
        text = text.removeprefix(vendor)
    return "-".join(part for part in text.split("-") if part)


def gpu_name(name: str) -> str | None:
    """The catalog GPU a name means: the catalog name itself, any case and spacing of it, or an alias
    (``H100``, ``h100``, ``H100-SXM5-80GB``, ``NVIDIA H200``); None if none."""
    names = _load("gpus.yaml")
    if name in names:
        return name
    key = _key(name)
    by_key = {_key(n): n for n in names}
    return by_key.get(key) or GPU_ALIASES.get(key)


def model_name(name: str) -> str | None:
    """The catalog model a name means: the catalog name, any case of it, or a Hugging Face repo id
    (``Qwen/Qwen3-30B-A3B``, ``meta-llama/Llama-3.1-70B``: the catalog names are the repo names); None
    if none."""
    names = _load("models.yaml")
    if name in names:
        return name
    repo = name.strip().rsplit("/", 1)[-1].lower()
    return {n.lower(): n for n in names}.get(repo)


def did_you_mean(name: str, known: list[str]) -> str:
    """`` (did you mean X or Y?)`` with the closest known names, or nothing when none is close."""
    import difflib

    typed = _key(name.rsplit("/", 1)[-1])
    # a name that starts with what was typed comes first ("Qwen3-30B" is Qwen3-30B-A3B before Qwen3-32B)
    extended = sorted(k for k in known if _key(k).startswith(typed + "-"))
    close = difflib.get_close_matches(typed, [_key(k) for k in known], n=3, cutoff=0.5)
    originals = {_key(k): k for k in known}
    names = list(dict.fromkeys([*extended, *(originals[c] for c in close)]))[:3]
    return f" (did you mean {' or '.join(names)}?)" if names else ""


def gpu_entry(name: str) -> dict[str, Any] | None:
    """The catalog entry for GPU ``name`` (``gpu_name`` resolves it; a fresh dict, safe to modify), or None
    if unknown."""
    resolved = gpu_name(name)
    entry = None if resolved is None else _load("gpus.yaml").get(resolved)
    return None if entry is None else {"name": resolved, **entry}


def model_entry(name: str) -> dict[str, Any] | None:
    """The Hugging Face config fields of model ``name`` (``model_name`` resolves it; a fresh dict), or None
    if unknown."""
    resolved = model_name(name)
    entry = None if resolved is None else _load("models.yaml").get(resolved)
    return None if entry is None else {"name": resolved, **entry}


def stack_problem(requested: str | None) -> str | None:
    """Why ``engine.calibration_stack`` names no software stack of the shipped calibration, or None. (The
    inputs layer checks the name here; model/calibration.py turns the file into fitted parameters.)"""
    stacks = list(calibration_data().get("stacks") or {})
    if requested is None or not stacks or requested in stacks:
        return None
    return (f"{requested!r} is not a software stack of calibration {calibration_data().get('id')}; "
            f"use one of: {', '.join(stacks)}")


def calibration_data() -> dict[str, Any]:
    """The fitted cost-model parameters (``calibration.yaml``, written by ``scripts/calibrate.py``)."""
    return _load("calibration.yaml")


_AMD_INSTINCT = re.compile(r"(^|[^a-z])mi\d{3}", re.IGNORECASE)


def is_amd_instinct(gpu_name: str) -> bool:
    """True for AMD Instinct MI parts by name (``mi300x``, ``AMD Instinct MI325X``): the GPUs that need
    ROCm builds (``amd.com/gpu`` in Kubernetes) and that TensorRT-LLM, a CUDA-only engine, cannot run on."""
    return bool(_AMD_INSTINCT.search(gpu_name))
