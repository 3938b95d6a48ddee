"""Issue 14, the first hour: what a new user meets before any plan is read.

Each test here failed on the main branch the issue was filed against.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel, as `pip install .` builds it (no build isolation: no network)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, cwd=out)
    (built,) = out.glob("optimizer-*.whl")
    return built


def test_a_wheel_ships_every_scenario(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "scenarios").glob("*.yaml"))
    assert shipped and sorted(Path(n).name for n in names if n.startswith("optimizer/scenarios/")) == shipped


def test_a_non_editable_install_lists_and_plans_shipped_scenarios(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import optimizer; print(optimizer.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target))  # the installed copy, not the checkout
    listed = subprocess.run([sys.executable, "-m", "optimizer.cli", "scenarios"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "16gpu-30b" in listed.stdout
    planned = subprocess.run([sys.executable, "-m", "optimizer.cli", "--scenario", "16gpu-30b"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert planned.returncode == 0, planned.stderr
    assert "proved optimal" in planned.stdout.lower() or "optimal" in planned.stdout
