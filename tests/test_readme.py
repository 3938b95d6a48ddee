"""Every `optimize` command in the README runs as written (issue 14): each line of the README's code
blocks that starts with `optimize`, in order, from a folder that holds the repository's `scenarios/`,
`fleets/`, `tests/` and `docs/` (the README's paths are relative to a clone), through click's CliRunner. A command whose
comment says "(exit N)" must exit N; every other one must exit 0. `> FILE` redirects stdout, as a shell
would.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from optimizer.cli import main

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[tuple[str, int]]:
    """(command line, expected exit code) for every `optimize` line inside the README's code fences."""
    commands, fenced = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        text = line.strip().removeprefix("$ ")
        if fenced and text.startswith("optimize "):
            expected = re.search(r"#.*\(exit (\d)", text)
            commands.append((text, int(expected.group(1)) if expected else 0))
    return commands


def test_the_readme_shows_commands() -> None:
    commands = readme_commands()
    assert len(commands) >= 20
    assert commands[0][0].startswith("optimize --model"), "the one-line form comes first"


def test_every_readme_command_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in ("scenarios", "fleets", "tests", "docs"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for command, expected in readme_commands():
        words = shlex.split(command, comments=True)[1:]
        target = None
        if ">" in words:
            at = words.index(">")
            words, target = words[:at], words[at + 1]
        result = runner.invoke(main, words)
        assert result.exit_code == expected, f"{command}\nexit {result.exit_code}\n{result.output[-2000:]}"
        if target:
            Path(target).write_text(result.stdout)
