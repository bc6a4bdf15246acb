"""The command line's documentation and start-up: docs/cli.md matches the commands, every
option says its default, experimental options are set apart, and importing the command line
stays light."""

import subprocess
import sys
from pathlib import Path

import click
import pytest

from pointcell.cli import main
from pointcell.cli.options import ExperimentalOption
from pointcell.cli.reference import command_help, render_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_docs_cli_md_is_the_commands_own_help():
    assert DOCS.read_text(encoding="utf-8") == render_markdown(), (
        "docs/cli.md is out of date: python -m pointcell.cli.reference > docs/cli.md"
    )


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_option_says_its_default(name):
    for param in main.commands[name].params:
        if not isinstance(param, click.Option) or param.is_flag or param.required:
            continue
        text = (param.help or "").lower()
        told = param.show_default or "default" in text or "required unless" in text
        assert told, f"pointcell {name} {param.opts[0]}: the help does not say its default"


def test_experimental_options_are_listed_apart():
    text = command_help(main, "predict")
    regular, experimental = text.split("Experimental options")
    assert "--adapt-norm" in experimental and "--adapt-norm" not in regular
    assert "--tta" in regular and "--tta" not in experimental
    marked = {
        p.name
        for c in main.commands.values()
        for p in c.params
        if isinstance(p, ExperimentalOption)
    }
    marked_by_now = {"adapt_norm", "detection_head", "fuse_floor", "min_proximity"}
    assert marked_by_now | {"colour_jitter", "self_labels"} <= marked


def test_importing_the_command_line_imports_no_heavy_library():
    code = (
        "import sys, pointcell.cli; "
        "print(sorted(m for m in ('torch', 'sklearn', 'dask', 'distributed') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_readme_is_a_short_manual_linking_the_docs():
    root = DOCS.parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for name in ("docs/cli.md", "docs/method.md", "docs/results.md"):
        assert f"({name}" in readme and (root / name).is_file(), name
