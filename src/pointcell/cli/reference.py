"""``docs/cli.md``, written from the click commands themselves so that it cannot drift from
them (``python -m pointcell.cli.reference > docs/cli.md``; a test compares the two)."""

from __future__ import annotations

import click

HEADER = """# Command reference

Every `pointcell` command with every option, as `pointcell <command> --help` prints them.
Generated from the code by `python -m pointcell.cli.reference > docs/cli.md`; a test fails when
the two differ. Options measured no better than the defaults are listed apart, as
*experimental* (the figures are in [method.md](method.md) and `benchmarks/results/`).

Exit codes of every command: 0 done; 1 a usage error or bad input (one line on stderr, never a
traceback); 130 Ctrl-C; 143 SIGTERM (unfinished files removed; `train` saves `last.pt` first).
"""


def command_help(group: click.Group, name: str, width: int = 100) -> str:
    """What ``pointcell <name> --help`` prints, at a fixed width."""
    command = group.commands[name]
    parent = click.Context(group, info_name="pointcell", terminal_width=width)
    context = click.Context(
        command, parent=parent, info_name=name, terminal_width=width, max_content_width=width
    )
    return command.get_help(context)


def render_markdown() -> str:
    """The whole reference: the group's help, then each command's."""
    from pointcell.cli import main

    parent = click.Context(main, info_name="pointcell", terminal_width=100, max_content_width=100)
    sections = [HEADER, "## pointcell\n", f"```text\n{main.get_help(parent)}\n```\n"]
    for name in main.commands:
        sections.append(f"## pointcell {name}\n")
        sections.append(f"```text\n{command_help(main, name)}\n```\n")
    return "\n".join(sections)


if __name__ == "__main__":
    print(render_markdown(), end="")
