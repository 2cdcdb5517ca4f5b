"""``feddx evaluate``: one JSON object on stdout, and one-line errors with non-zero exits for
an empty dataset, a label outside the candidates, and a wrong or corrupt adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import feddx.cli.evaluate  # noqa: F401  (registers the command until cli/__init__ imports it)
from cli_errors import one_line_error
from feddx.cli import main
from feddx.data.jsonl import write_jsonl
from feddx.data.schema import Case, Finding, Label

_DX = {"Angina": "chest pain: pressure", "GERD": "chest pain: burning", "Pneumonia": "cough"}


def _cases(n: int) -> list[Case]:
    names = list(_DX)
    return [
        Case(
            case_id=f"c{i}",
            age=20 + i,
            sex="female" if i % 2 else "male",
            institution="H1" if i % 3 else "H2",
            findings=(Finding(name=_DX[names[i % 3]]),),
            label=Label(diagnosis=names[i % 3]),
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "cases.jsonl"
    write_jsonl(_cases(15), path)
    return path


def test_json_output_shape_and_report(
    model_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = tmp_path / "report.html"
    argv = ["evaluate", "--data", f"jsonl:{data_file}", "--model", str(model_dir), "--json"]
    preds = tmp_path / "cases.jsonl"
    extra = [
        "--report",
        str(html),
        "--result",
        str(tmp_path / "r.json"),
        "--predictions",
        str(preds),
    ]
    assert main([*argv, *extra]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0  # exactly one JSON object, nothing else on stdout
    result = json.loads(out)
    for key in ("n", "top1", "top3", "top5", "macro_f1", "latency_ms_p50"):
        assert isinstance(result[key], int | float), key
    assert result["n"] == 3  # the stratified 20% test split of 15 cases
    assert result["meta"]["split"] == "test" and result["meta"]["n_train"] == 12
    assert result["baseline"]["summary"]["n"] == 3
    assert result["candidates"] == sorted(_DX)
    assert html.read_text().startswith("<!doctype html>")
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 3
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["ranked"]) == len(_DX) for r in rows)
    assert sum(r["correct"] for r in rows) == round(result["top1"] * 3)


def test_split_all_and_limit(
    model_dir: Path, data_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--data", f"jsonl:{data_file}", "--model", str(model_dir), "--json"]
    assert main([*argv, "--split", "all", "--limit", "5", "--scoring", "constrained"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 5 and result["baseline"] is None
    assert result["scoring_method"] == "constrained"


def test_empty_dataset_is_one_line(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["evaluate", "--data", f"jsonl:{empty}", "--model", str(model_dir)]) == 2
    assert "dataset is empty" in one_line_error(capsys)


def test_label_outside_candidates_is_one_line(
    model_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cands = tmp_path / "candidates.txt"
    cands.write_text("Angina\nGERD\n")
    argv = ["evaluate", "--data", f"jsonl:{data_file}", "--model", str(model_dir)]
    assert main([*argv, "--candidates", str(cands), "--split", "all"]) == 2
    err = one_line_error(capsys)
    assert "label outside the candidate list" in err and "'Pneumonia'" in err


def test_unknown_source_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--data", "nonsense:/tmp/x"]) == 2
    assert "unknown data source" in one_line_error(capsys)


def test_adapter_for_another_base_model_is_one_line(
    model_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM

    import feddx.model.adapter as adapter_mod
    from feddx.model.adapter import LoraSpec

    net = adapter_mod.attach_lora(AutoModelForCausalLM.from_pretrained(model_dir), LoraSpec(rank=4))
    adapter_dir = tmp_path / "adapter"
    adapter_mod.save_adapter(
        net, adapter_dir, base_fingerprint="other-model:123", max_prompt_tokens=320
    )
    argv = ["evaluate", "--data", f"jsonl:{data_file}", "--model", str(model_dir)]
    assert main([*argv, "--adapter", str(adapter_dir)]) == 1
    assert "trained for base model 'other-model:123'" in one_line_error(capsys)


def test_corrupt_adapter_is_one_line(
    model_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad-adapter"
    bad.mkdir()
    (bad / "feddx_adapter.json").write_text("{not json")
    argv = ["evaluate", "--data", f"jsonl:{data_file}", "--model", str(model_dir)]
    assert main([*argv, "--adapter", str(bad)]) == 1
    assert "corrupt" in one_line_error(capsys)


def test_matching_adapter_is_loaded_and_recorded(
    model_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import feddx.model.adapter as adapter_mod
    from feddx.model.adapter import LoraSpec
    from feddx.model.loading import load_base_model

    loaded = load_base_model(str(model_dir))
    net = adapter_mod.attach_lora(loaded.model, LoraSpec(rank=4))
    adapter_dir = tmp_path / "adapter"
    adapter_mod.save_adapter(
        net, adapter_dir, base_fingerprint=loaded.fingerprint, max_prompt_tokens=96
    )
    argv = ["evaluate", "--data", f"jsonl:{data_file}", "--model", str(model_dir), "--json"]
    assert main([*argv, "--adapter", str(adapter_dir), "--no-baseline"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["meta"]["adapter"] == str(adapter_dir)
    assert result["meta"]["max_prompt_tokens"] == 96  # the adapter's own prompt budget


def _random_adapter(model_dir: Path, out: Path, seed: int, rank: int = 4) -> None:
    """A saved adapter whose LoRA weights are random (a fresh one is a no-op: B starts at 0)."""
    import torch

    from feddx.model.adapter import LoraSpec, attach_lora, save_adapter
    from feddx.model.loading import load_base_model

    loaded = load_base_model(str(model_dir))
    net = attach_lora(loaded.model, LoraSpec(rank=rank))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.5)
    save_adapter(net, out, base_fingerprint=loaded.fingerprint, max_prompt_tokens=320)


def _scores(path: Path) -> dict[str, dict[str, float]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["case_id"]: {c["name"]: c["score"] for c in r["ranked"]} for r in rows}


def test_repeated_adapter_ranks_by_the_mean_probability_of_the_ensemble(
    model_dir: Path,
    data_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import math

    # predictions files name cases by keyed pseudonyms: one key makes runs joinable
    monkeypatch.setenv("FEDDX_DEID_KEY", "ensemble-test-key")
    a, b = tmp_path / "a", tmp_path / "b"
    _random_adapter(model_dir, a, seed=1)
    _random_adapter(model_dir, b, seed=2)
    argv = ["evaluate", "--data", f"jsonl:{data_file}", "--model", str(model_dir), "--json"]
    argv += ["--split", "all", "--no-baseline"]
    for name, adapters in (("a", [a]), ("b", [b]), ("ab", [a, b])):
        flags = [x for d in adapters for x in ("--adapter", str(d))]
        assert main([*argv, *flags, "--predictions", str(tmp_path / f"{name}.jsonl")]) == 0
        result = json.loads(capsys.readouterr().out)
    assert result["meta"]["adapters"] == [str(a), str(b)]
    sa, sb, sab = (_scores(tmp_path / f"{n}.jsonl") for n in ("a", "b", "ab"))
    assert sa != sb  # two different members
    for case_id, mixed in sab.items():

        def softmax(s: dict[str, float]) -> dict[str, float]:
            z = max(s.values())
            w = {k: math.exp(v - z) for k, v in s.items()}
            return {k: v / sum(w.values()) for k, v in w.items()}

        pa, pb = softmax(sa[case_id]), softmax(sb[case_id])
        for name, score in mixed.items():
            assert math.exp(score) == pytest.approx((pa[name] + pb[name]) / 2, rel=1e-4)


def test_ensemble_of_different_lora_layouts_is_one_line(
    model_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _random_adapter(model_dir, a, seed=1, rank=4)
    _random_adapter(model_dir, b, seed=2, rank=8)
    argv = ["evaluate", "--data", f"jsonl:{data_file}", "--model", str(model_dir)]
    assert main([*argv, "--adapter", str(a), "--adapter", str(b)]) == 1
    assert "must share their LoRA layout" in one_line_error(capsys)


def test_extra_data_fits_a_second_baseline_on_what_the_adapter_trained_on(
    model_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra.jsonl"
    more = [
        c.model_copy(update={"case_id": f"x{c.case_id}", "text": f"second release {c.case_id}"})
        for c in _cases(6)
    ]
    write_jsonl(more, extra)
    argv = ["evaluate", "--data", f"jsonl:{data_file}", "--model", str(model_dir), "--json"]
    assert main([*argv, "--extra-data", f"jsonl:{extra}", "--generate", "0"]) == 0
    data = json.loads(capsys.readouterr().out)
    n_train = data["meta"]["n_train"]
    assert n_train == 12  # 80% of 15
    assert data["baseline"]["extra"]["n_train"] == n_train
    assert data["baseline_extra"]["extra"]["n_train"] == n_train + 6
    assert data["meta"]["baseline_extra_data"] == {f"jsonl:{extra}": 6}
    assert data["baseline_extra"]["summary"]["n"] == data["baseline"]["summary"]["n"] == 3

    # Extra cases that repeat held-out ones are refused here as in `feddx train`.
    write_jsonl(_cases(15), extra)
    assert main([*argv, "--extra-data", f"jsonl:{extra}"]) == 2
    assert "identical to held-out cases" in one_line_error(capsys)
