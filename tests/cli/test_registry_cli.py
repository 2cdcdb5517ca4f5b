"""``feddx registry``: add, list, show, delete, verify and resolve, with ``--json`` output that
parses, one-line errors, exit code 1 for a refused adapter; and ``feddx federate --registry``
registering the run's global adapter."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from feddx.cli import main
from feddx.model.loading import base_fingerprint as model_fingerprint
from feddx.personalize.registry import AdapterRegistry
from personalize.registry_helpers import BASE, flip_byte, save_tiny_adapter
from tiny_federation import tiny_federation_config


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def sources(make_model: Callable[..., Any], tmp_path: Path) -> dict[str, Path]:
    """Three adapter folders (global, regional, institutional) saved for BASE."""
    return {
        name: save_tiny_adapter(make_model, tmp_path / "src" / name, seed=seed)
        for seed, name in enumerate(("global", "regional", "institutional"), start=1)
    }


@pytest.fixture()
def root(tmp_path: Path, sources: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> Path:
    """A registry holding global/v1 > regional/europe/v1 > institutional/cleveland/v1, built
    through the CLI."""
    root = tmp_path / "registry"
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"top1": 0.533, "val_loss": 1.5}))
    steps = [
        ["global", "--round", "6", "--metrics-json", str(metrics)],
        ["regional", "--region", "europe", "--parent", "global/v1"],
        ["institutional", "--institution", "cleveland", "--parent", "regional/europe/v1"],
    ]
    for level, *rest in steps:
        code, out, err = run(
            [
                "registry",
                "add",
                str(sources[level]),
                "--level",
                level,
                "--registry",
                str(root),
                *rest,
            ],
            capsys,
        )
        assert code == 0, err
        assert out.startswith("Registered ")
    return root


def test_add_list_and_show_with_json(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["registry", "list", "--registry", str(root), "--json"], capsys)
    assert code == 0
    listed = json.loads(out)
    assert [e["adapter_id"] for e in listed] == [
        "global/v1",
        "regional/europe/v1",
        "institutional/cleveland/v1",
    ]
    assert listed[0]["metrics"] == {"top1": 0.533, "val_loss": 1.5}
    assert listed[0]["training_round"] == 6
    assert listed[2]["region"] == "europe" and listed[2]["parent_id"] == "regional/europe/v1"
    assert all(e["base_fingerprint"] == BASE and e["max_prompt_tokens"] == 64 for e in listed)

    code, out, _ = run(
        ["registry", "list", "--registry", str(root), "--level", "regional", "--json"], capsys
    )
    assert [e["adapter_id"] for e in json.loads(out)] == ["regional/europe/v1"]

    code, out, _ = run(
        ["registry", "show", "regional/europe/v1", "--registry", str(root), "--json"], capsys
    )
    shown = json.loads(out)
    assert shown["status"] == "ok" and shown["children"] == ["institutional/cleveland/v1"]
    assert shown["path"] == str(root / "adapters" / "regional" / "europe" / "v1")

    code, out, _ = run(["registry", "list", "--registry", str(root)], capsys)
    assert code == 0 and "institutional/cleveland/v1" in out and "top1 0.533" in out
    code, out, _ = run(["registry", "show", "global/v1", "--registry", str(root)], capsys)
    assert code == 0 and "status             ok" in out


def test_root_is_a_deprecated_name_of_registry(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--registry names the folder on every command (issue 26); --root still works."""
    code, new, err = run(["registry", "list", "--registry", str(root), "--json"], capsys)
    assert code == 0 and err == ""
    code, old, err = run(["registry", "list", "--root", str(root), "--json"], capsys)
    assert code == 0 and old == new
    assert err == "feddx: note: --root is deprecated; use --registry\n"


def test_add_json_and_bad_input_is_one_line(
    root: Path, sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        [
            "registry",
            "add",
            str(sources["global"]),
            "--level",
            "global",
            "--registry",
            str(root),
            "--json",
        ],
        capsys,
    )
    assert code == 0 and json.loads(out)["adapter_id"] == "global/v2"
    bad_metrics = tmp_path / "bad.json"
    bad_metrics.write_text('{"top1": "high"}')
    cases = [
        (
            ["--level", "global", "--metrics-json", str(bad_metrics)],
            2,
            "metric top1 is not a finite number",
        ),
        (["--level", "regional"], 2, "a regional adapter needs a region"),
        (
            ["--level", "regional", "--region", "asia", "--parent", "global/v9"],
            1,
            "parent adapter global/v9 is not in the registry",
        ),
        (["--level", "national"], 2, "'national' is not one of"),
    ]
    for extra, exit_code, message in cases:
        code, _, err = run(
            ["registry", "add", str(sources["global"]), "--registry", str(root), *extra], capsys
        )
        assert code == exit_code, err
        assert err.startswith("feddx: error:") and message in err and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(
        ["registry", "add", str(empty), "--level", "global", "--registry", str(root)], capsys
    )
    assert (
        code == 1
        and err == f"feddx: error: {empty} is not a feddx adapter (no feddx_adapter.json)\n"
    )


def test_verify_exits_1_with_one_line_per_refused_adapter(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["registry", "verify", "--registry", str(root), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out) == {
        "root": str(root),
        "ok": ["global/v1", "regional/europe/v1", "institutional/cleveland/v1"],
        "refused": [],
        "orphans_removed": [],
    }
    registry = AdapterRegistry(root)
    flip_byte(registry.get("global/v1"))
    (registry.get("institutional/cleveland/v1").path / "adapter_config.json").unlink()

    code, out, err = run(["registry", "verify", "--registry", str(root)], capsys)
    assert code == 1
    assert err.splitlines() == [
        "feddx: error: adapter global/v1 refused: corrupt (content hash mismatch: a file changed "
        "since it was registered)",
        "feddx: error: adapter institutional/cleveland/v1 refused: missing (adapter_config.json "
        "is gone)",
    ]
    assert "ok       regional/europe/v1" in out and "3 adapter(s): 1 ok, 2 refused" in out

    code, out, err = run(["registry", "verify", "--registry", str(root), "--json"], capsys)
    assert code == 1 and err == ""
    report = json.loads(out)
    assert report["ok"] == ["regional/europe/v1"]
    assert [r["adapter_id"] for r in report["refused"]] == [
        "global/v1",
        "institutional/cleveland/v1",
    ]

    code, out, err = run(["registry", "verify", "global/v1", "--registry", str(root)], capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("feddx: error: adapter global/v1 refused: corrupt")
    code, _, err = run(
        ["registry", "verify", "regional/europe/v1", "--registry", str(root)], capsys
    )
    assert code == 0


def test_resolve_prints_the_chain_and_the_fallbacks(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--registry", str(root), "--base-fingerprint", BASE]
    code, out, err = run(
        ["registry", "resolve", "--institution", "cleveland", *base, "--json"], capsys
    )
    assert code == 0, err
    assert json.loads(out) == {
        "chain": ["global/v1", "regional/europe/v1", "institutional/cleveland/v1"],
        "answering": "institutional/cleveland/v1",
        "fallbacks": [],
        "unknown": [],
        "case_index": None,
        "base_fingerprint": BASE,
    }
    flip_byte(AdapterRegistry(root).get("institutional/cleveland/v1"))
    code, out, err = run(
        [
            "registry",
            "resolve",
            "--institution",
            "Cleveland",
            "--region",
            "europe",
            *base,
            "--json",
        ],
        capsys,
    )
    resolved = json.loads(out)
    assert resolved["answering"] == "regional/europe/v1"
    assert resolved["fallbacks"] == [
        "institutional/cleveland/v1 skipped: corrupt (content hash mismatch: a file changed "
        "since it was registered)"
    ]
    code, out, _ = run(["registry", "resolve", "--institution", "cleveland", *base], capsys)
    assert code == 0
    assert "chain       global/v1 > regional/europe/v1" in out
    assert "answering   regional/europe/v1" in out
    assert "fallback    institutional/cleveland/v1 skipped: corrupt" in out
    code, out, _ = run(
        ["registry", "resolve", "--registry", str(root), "--base-fingerprint", "other:1", "--json"],
        capsys,
    )
    assert json.loads(out)["answering"] is None


def test_resolve_says_when_the_institution_is_unknown(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An institution without any adapter gets the global one, and is told so (issue 26)."""
    base = ["--registry", str(root), "--base-fingerprint", BASE]
    code, out, _ = run(["registry", "resolve", "--institution", "nobody", *base], capsys)
    assert code == 0
    assert "answering   global/v1" in out
    lines = [x for x in out.splitlines() if x.startswith("unknown")]
    assert lines == [
        "unknown     institution nobody is unknown to this registry: answering with global/v1"
    ]
    code, out, _ = run(
        ["registry", "resolve", "--institution", "Nobody", "--region", "mars", *base, "--json"],
        capsys,
    )
    assert json.loads(out)["unknown"] == [
        "institution nobody is unknown to this registry",
        "region mars is unknown to this registry",
    ]
    code, out, _ = run(
        ["registry", "resolve", "--institution", "Cleveland", *base, "--json"], capsys
    )
    assert json.loads(out)["unknown"] == []  # registered (as cleveland): known


def test_delete_asks_unless_yes(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    code, out, err = run(
        ["registry", "delete", "regional/europe/v1", "--registry", str(root)], capsys
    )
    assert code == 130 and "institutional/cleveland/v1" in out  # the question names the child
    assert AdapterRegistry(root).get("regional/europe/v1")
    code, out, _ = run(
        ["registry", "delete", "regional/europe/v1", "--registry", str(root), "--yes"], capsys
    )
    assert code == 0 and out.strip() == "Deleted regional/europe/v1"
    assert not (root / "adapters" / "regional").exists()
    code, _, err = run(
        ["registry", "delete", "regional/europe/v1", "--registry", str(root), "--yes"], capsys
    )
    assert code == 1
    assert err == f"feddx: error: adapter regional/europe/v1 is not in the registry {root}\n"


def test_read_commands_refuse_a_missing_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["list"],
        ["show", "global/v1"],
        ["verify"],
        ["resolve", "--base-fingerprint", "x"],
    ):
        code, _, err = run(["registry", *argv, "--registry", str(tmp_path / "typo")], capsys)
        assert code == 1
        assert (
            err
            == f"feddx: error: no adapter registry at {tmp_path / 'typo'} (no registry.sqlite3)\n"
        )
    assert not (tmp_path / "typo").exists()


def test_the_default_root_is_feddx_registry(
    sources: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FEDDX_REGISTRY", str(tmp_path / "env-registry"))
    code, out, _ = run(["registry", "add", str(sources["global"]), "--level", "global"], capsys)
    assert code == 0 and out.strip() == f"Registered global/v1 in {tmp_path / 'env-registry'}"
    code, out, _ = run(["registry", "list", "--json"], capsys)
    assert [e["adapter_id"] for e in json.loads(out)] == ["global/v1"]


def test_model_fingerprint_matches_the_loaded_model_without_loading_it(
    tmp_path: Path,
    tokenizer: Any,
    capsys: pytest.CaptureFixture[str],
    make_model: Callable[..., Any],
) -> None:
    from feddx.model.loading import load_base_model
    from tiny_llama import make_tiny_llama

    model_dir = tmp_path / "tiny-base"
    make_tiny_llama(len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    fingerprint = model_fingerprint(str(model_dir))
    assert fingerprint == load_base_model(str(model_dir)).fingerprint == "tiny-base:local"
    gguf = model_fingerprint("smollm2-135m-instruct")
    name, key = gguf.split(":")
    assert name == "smollm2-135m-instruct" and len(key) == 16 and int(key, 16) >= 0

    root = tmp_path / "registry"
    adapter = save_tiny_adapter(make_model, tmp_path / "a", base=fingerprint)
    AdapterRegistry(root).register(adapter, level="global")
    code, out, err = run(
        ["registry", "resolve", "--registry", str(root), "--model", str(model_dir), "--json"],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["answering"] == "global/v1"


def test_federate_registers_its_global_adapter(
    tmp_path: Path, tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import feddx.cli.federate  # noqa: F401
    from feddx.data.jsonl import write_jsonl
    from feddx.data.schema import Case, Finding, Label
    from feddx.federated.deploy.control import toml_value
    from feddx.federated.task import task_data
    from feddx.personalize.registry import data_fingerprint
    from tiny_llama import make_tiny_llama

    model_dir = tmp_path / "tiny-base"
    make_tiny_llama(len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    symptoms = {"Pneumonia": "productive cough", "Asthma": "wheezing", "Migraine": "photophobia"}
    cases = [
        Case(
            case_id=f"c{i}",
            age=40.0,
            findings=(Finding(name=symptoms[label]),),
            label=Label(diagnosis=label),
        )
        for i, label in enumerate(list(symptoms) * 4)
    ]
    data = tmp_path / "cases.jsonl"
    write_jsonl(cases, data)
    cfg = tiny_federation_config(
        model_dir,
        f"jsonl:{data}",
        max_eval_cases=3,
        activation_cache_dir=str(tmp_path / "activations"),
    )
    config = tmp_path / "fed.toml"
    config.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in cfg.to_run_config().items()))
    root = tmp_path / "registry"
    argv = [
        "federate",
        "--config",
        str(config),
        "--engine",
        "inprocess",
        "--out",
        str(tmp_path / "run"),
    ]
    code, out, err = run([*argv, "--registry", str(root)], capsys)
    assert code == 0, err
    assert f"Registered the global adapter as global/v1 in {root}" in out
    [entry] = AdapterRegistry(root).entries()
    assert entry.training_round == 1 and entry.level == "global"
    assert entry.base_fingerprint == "tiny-base:local" and entry.max_prompt_tokens == 64
    assert {"top1", "top3", "val_loss"} <= set(entry.metrics)
    assert entry.metrics["n"] == 3.0  # top-1 over 3 validation cases: a multiple of 1/3
    assert entry.metrics["top1"] * 3 == pytest.approx(round(entry.metrics["top1"] * 3))
    # The fingerprint is over the training split the clients were partitioned from (the
    # validation cases are held out), never over the cases' text.
    train = task_data(cfg).train
    assert 0 < len(train) < len(cases)
    assert entry.data_fingerprint == data_fingerprint(train) != data_fingerprint(cases)
