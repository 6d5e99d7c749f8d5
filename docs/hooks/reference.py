"""MkDocs hook: reference tables generated from rnnkit itself, so that they cannot drift from it.

- ``<!-- cli-reference -->`` becomes one section per command (``rnnkit COMMAND``): its help, its
  usage line and a table of its options by group, with defaults and choices, read from
  :func:`rnnkit.cli.build_parser` (what ``--help`` says);
- ``<!-- options-reference -->`` becomes a table of every option of a run, by group, from their
  declarations in :mod:`rnnkit.config`: Python name, flag, type, default, whether it may change
  on resume and whether giving it turns the automatic sizing off;
- in the API reference, Sphinx roles left in docstrings (``:func:`x```) are shown as code."""

from __future__ import annotations

import argparse
import html
import re

CLI_PLACEHOLDER = "<!-- cli-reference -->"
OPTIONS_PLACEHOLDER = "<!-- options-reference -->"
SPHINX_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):(<code>)~?")


def cell(text: str) -> str:
    return html.escape(" ".join(str(text).split())).replace("|", "&#124;")


def option_names(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    metavar = ""
    if action.nargs != 0:
        metavar = action.metavar or (action.dest.upper() if not action.choices else "")
        if action.nargs in ("+", "*"):
            metavar = f"{metavar} [{metavar} ...]"
    return ", ".join(f"`{name}{' ' + metavar if metavar else ''}`" for name in action.option_strings)


def describe(action: argparse.Action) -> str:
    text = (action.help or "").replace("%(default)s", str(action.default)).replace("%%", "%")
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        text += f" (one of: {', '.join(map(str, action.choices))})"
    if (
        action.option_strings
        and action.default not in (None, False, "", [], argparse.SUPPRESS)
        and action.nargs != 0
        and "(default" not in text
    ):
        text += f" (default: {action.default})"
    return cell(text)


def command_section(name: str, parser: argparse.ArgumentParser, summary: str) -> list[str]:
    usage = " ".join(parser.format_usage().split())
    lines = [
        f"## `rnnkit {name}`",
        "",
        cell(summary or parser.description or ""),
        "",
        "```text",
        usage.replace("usage: ", "", 1),
        "```",
        "",
    ]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS and a.dest != "help"]
        if not actions:
            continue
        title = "arguments" if group.title in ("positional arguments",) else group.title
        lines += [f"**{title.capitalize()}**", "", "| option | meaning |", "| --- | --- |"]
        lines += [f"| {option_names(a)} | {describe(a)} |" for a in actions]
        lines.append("")
    return lines


def cli_reference() -> str:
    from rnnkit.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in commands._choices_actions}
    lines = ["Options that every command takes: `rnnkit --version`, `rnnkit COMMAND --help`.", ""]
    for name, subparser in commands.choices.items():
        lines += command_section(name, subparser, summaries.get(name, ""))
    return "\n".join(lines)


def options_reference() -> str:
    from rnnkit.config import GROUPS, RunOptions, TrainConfig, flag_name, option_fields

    owner = {name: cls.__name__ for cls in (TrainConfig, RunOptions) for name in cls.__dataclass_fields__}
    lines = []
    for group in GROUPS:
        lines += [
            f"**{group.capitalize()}**",
            "",
            "| Python name | flag | type | default | on resume | sizing | meaning |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for f in (f for f in option_fields() if f.metadata["group"] == group):
            default = f.default_factory() if callable(f.default_factory) else f.default
            choices = f" (one of: {', '.join(f.metadata['choices'])})" if f.metadata["choices"] else ""
            lines.append(
                f"| `{f.name}` ({owner[f.name]}) | `{flag_name(f)}` | {f.type} | `{default!r}` | "
                f"{'may change' if f.metadata['resumable'] else 'kept'} | "
                f"{'turns it off' if f.metadata['sizing'] else ''} | {cell(f.metadata['help'] + choices)} |"
            )
        lines.append("")
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs) -> str:
    if CLI_PLACEHOLDER in markdown:
        markdown = markdown.replace(CLI_PLACEHOLDER, cli_reference())
    if OPTIONS_PLACEHOLDER in markdown:
        markdown = markdown.replace(OPTIONS_PLACEHOLDER, options_reference())
    return markdown


def on_page_content(html_text: str, **kwargs) -> str:
    return SPHINX_ROLE.sub(r"\1", html_text)
