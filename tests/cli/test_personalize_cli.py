"""``feddx personalize --config``: writes the per-group table and plot, prints JSON with
``--json``, and refuses a bad config in one line naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import feddx.cli.personalize  # noqa: F401  (registers the command until cli/__init__ imports it)
from cli_errors import one_line_error
from feddx.cli import main
from feddx.data.jsonl import write_jsonl
from feddx.data.schema import Case, Finding, Label


def _cases() -> list[Case]:
    out = []
    for inst, region, share in (("Alpha", "east", 0.8), ("Beta", "west", 0.2)):
        for i in range(20):
            out.append(
                Case(
                    case_id=f"{inst}-{i}",
                    findings=(Finding(name="cough"),),
                    region=region,
                    institution=inst,
                    label=Label(diagnosis="Asthma" if i < 20 * share else "Pneumonia"),
                )
            )
    return out


def _config(tmp_path: Path, tiny_llama_dir: Path, extra: str = "") -> Path:
    data = tmp_path / "cases.jsonl"
    write_jsonl(_cases(), data)
    path = tmp_path / "p.yaml"
    path.write_text(
        f"data: jsonl:{data}\nmodel: {tiny_llama_dir}\nmin_institution_cases: 5\n"
        "methods: [finetune]\nregional: [finetune]\nrounds: 1\nlocal_epochs: 1\n"
        "personal_epochs: 1\nmax_prompt_tokens: 128\n"
        "lora: {rank: 2, alpha: 4.0, top_layers: 1}\n"
        f"registry: {tmp_path / 'reg'}\n" + extra
    )
    return path


def test_writes_table_plot_and_json(
    tmp_path: Path, tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "personalize",
            "--config",
            str(_config(tmp_path, tiny_llama_dir)),
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["columns"] == [
        "global",
        "+regional (finetune)",
        "+institutional (finetune)",
        "selected on validation",
        "+individual context",
    ]
    groups = [(r["kind"], r["group"], r["n"]) for r in printed["rows"]]
    assert groups == [
        ("all", "all", 8),
        ("region", "east", 4),
        ("institution", "Alpha", 4),
        ("region", "west", 4),
        ("institution", "Beta", 4),
    ]
    table, errors = (out / "table.md").read_text().split("## Error by region and institution")
    assert table.count("| **") == 3  # all + 2 regions
    assert errors.count("| **") == 6  # the same rows, error per level and change per level
    assert (out / "per_group.png").stat().st_size > 1000
    assert (out / "error_by_group.png").stat().st_size > 1000
    assert json.loads((out / "table.json").read_text())["rows"] == printed["rows"]
    # registered: the global adapter, and the others only where they passed the gate
    registered = {a["key"] for a in printed["adapters"] if a.get("registry_id")}
    passed = {k for k, d in printed["gate"]["decisions"].items() if d["accepted"]}
    assert registered == {"global", *passed}
    assert len(printed["gate"]["decisions"]) == 2 + 2  # 2 regions, 2 institutions
    assert "gate:" in (out / "table.md").read_text()


def test_bad_config_is_one_line_naming_the_key(
    tmp_path: Path, tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, tiny_llama_dir, "roundz: 3\n")
    assert main(["personalize", "--config", str(path)]) != 0
    err = one_line_error(capsys)
    assert "p.yaml" in err and "roundz" in err
    path = _config(tmp_path, tiny_llama_dir, "ditto_mu: -1\n")
    assert main(["personalize", "--config", str(path)]) != 0
    assert "ditto_mu" in one_line_error(capsys)
    assert main(["personalize", "--config", str(tmp_path / "missing.yaml")]) != 0
    assert "missing.yaml" in one_line_error(capsys)
