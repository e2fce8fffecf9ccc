"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

import re

from tests.helpers import PROJECT


def readme_commands() -> list[str]:
    text = (PROJECT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert first_block, "README must open with a sh block of set-up commands"
    return [line for line in first_block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_two_setup_commands_and_ci_runs_the_test_one() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert "archiver" in commands[0] and "pytest" in commands[1]
    ci_lines = (PROJECT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci_lines, "the test command in .ci/run must be the README's, verbatim"
