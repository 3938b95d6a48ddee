"""Golden plans for every shipped scenario (reviewed once, then frozen; regenerate with
scripts/update_golden.py and explain the change)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from optimizer.inputs.loader import shipped_scenarios

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("update_golden", ROOT / "scripts" / "update_golden.py")
update_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(update_golden)


def test_every_shipped_scenario_has_a_golden_file():
    names = set(shipped_scenarios())
    files = {p.stem for p in (ROOT / "tests" / "golden").glob("*.json")}
    assert names == files
    assert {"16gpu-30b", "4gpu-10b", "3gpu-32gb", "128gpu-64e"} <= names


@pytest.mark.parametrize("name", sorted(shipped_scenarios()))
def test_golden(name):
    expected = json.loads((ROOT / "tests" / "golden" / f"{name}.json").read_text())
    assert update_golden.golden(name) == expected


def test_16gpu_30b_headline():
    result = update_golden.golden("16gpu-30b")
    plan = result["plan"]
    assert plan["tp"] * plan["pp"] * plan["dp"] == 16
    assert plan["etp"] * plan["ep"] * plan["edp"] * plan["pp"] == 16
    assert result["status"] == "OPTIMAL"


def test_3gpu_uses_all_three_gpus():
    plan = update_golden.golden("3gpu-32gb")["plan"]
    assert plan["tp"] * plan["pp"] * plan["dp"] == 3
