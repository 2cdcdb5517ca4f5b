"""One grammar across commands (issue 26 item 1), checked over the whole typer app: a concept
has one option name everywhere, data is SOURCE:PATH, and old names are only rewritten."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import click
import pytest
import typer

from feddx.cli import DEPRECATED_OPTIONS, main
from feddx.cli._app import app

# concept -> (its one name, names other commands once used or might drift to)
CONCEPTS: dict[str, tuple[str, set[str]]] = {
    "registry folder": ("--registry", {"--root", "--registry-root", "--registry-dir"}),
    "learning rate": ("--learning-rate", {"--lr", "--learning_rate"}),
    "at most N cases": ("--limit", {"--max-cases", "--n-cases", "--num-cases", "--max-n"}),
    "the cases": ("--data", {"--dataset", "--data-spec", "--source"}),
    "config overrides": ("--set", {"--run-config", "--override", "--overrides"}),
    "output folder or file": ("--out", {"--output", "--out-dir", "--output-dir"}),
    "JSON on stdout": ("--json", {"--as-json", "--format"}),
    "config file": ("--config", {"--config-file", "--cfg"}),
}


def _options() -> Iterator[tuple[str, click.Parameter]]:
    def walk(cmd: click.Command, path: str) -> Iterator[tuple[str, click.Parameter]]:
        for p in cmd.params:
            yield path, p
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}".strip())

    return walk(typer.main.get_command(app), "")


def test_no_command_names_a_concept_differently() -> None:
    used: dict[str, set[str]] = defaultdict(set)
    for path, p in _options():
        for name in (*p.opts, *p.secondary_opts):
            used[name].add(path or "feddx")
    wrong = {
        concept: {n: sorted(used[n]) for n in others if n in used}
        for concept, (_, others) in CONCEPTS.items()
        if any(n in used for n in others)
    }
    assert not wrong, f"use one name per concept: {wrong}"
    assert not set(DEPRECATED_OPTIONS) & set(used)  # old names are rewritten, never defined
    # root options a user may also write after the subcommand: no command may define them
    for name in ("--quiet", "-q", "--log-format"):
        assert used.get(name) == {"feddx"}, (name, used.get(name))


def test_a_parameter_has_one_option_name_across_commands() -> None:
    names: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path, p in _options():
        if isinstance(p, click.Option) and p.name:
            primary = next((o for o in p.opts if o.startswith("--")), p.opts[0])
            names[p.name][primary].append(path)
    split = {dest: dict(by) for dest, by in names.items() if len(by) > 1}
    assert not split, f"the same setting under different names: {split}"


def test_commands_that_read_cases_take_limit() -> None:
    takes = {path for path, p in _options() if "--limit" in p.opts}
    readers = {
        "data stats", "data prepare", "data partition", "train", "evaluate", "demo",
        "deploy prepare", "federate experiments",
    }  # fmt: skip
    assert readers <= takes, sorted(readers - takes)


def test_every_option_reading_cases_takes_source_path() -> None:
    """Options that name data say SOURCE:PATH in their help (or NAME=SOURCE:PATH)."""
    for path, p in _options():
        if isinstance(p, click.Option) and p.name in ("data", "dataset", "extra_data"):
            assert "SOURCE" in (p.help or ""), (path, p.opts)


@pytest.mark.parametrize(("old", "new"), sorted(DEPRECATED_OPTIONS.items()))
def test_deprecated_names_are_rewritten_with_one_note(
    old: str, new: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from feddx.cli import _rename_deprecated

    assert _rename_deprecated(["x", old, "1", f"{old}=2", "--", old]) == [
        "x", new, "1", f"{new}=2", "--", old
    ]  # fmt: skip
    assert capsys.readouterr().err.count(f"feddx: note: {old} is deprecated; use {new}") == 2


def test_root_options_may_follow_the_subcommand() -> None:
    from feddx.cli import _hoist_root_options

    argv = ["train", "--data", "x", "--quiet", "--log-format", "json", "--", "--quiet"]
    assert _hoist_root_options(argv) == [
        "--quiet", "--log-format", "json", "train", "--data", "x", "--", "--quiet"
    ]  # fmt: skip


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--no-such-option"]) == 2
    assert main(["data", "stats", "nosuch:x"]) == 2  # input error: a DataError
    err = capsys.readouterr().err
    assert err.count("feddx: error:") == 2 and "Traceback" not in err
