"""``feddx train``: end to end on a tiny model directory, and one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from train_fixtures import make_cases, make_tiny_llama  # type: ignore[import-not-found]

import feddx.cli.train  # noqa: F401  (registers the command until the CLI imports it)
from feddx.cli import main
from feddx.data.jsonl import write_jsonl
from feddx.model.adapter import LoraSpec, adapter_lora_spec, attach_lora, load_adapter


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    d = tmp_path_factory.mktemp("tiny-model")
    make_tiny_llama(len(tokenizer), layers=3).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "cases.jsonl"
    write_jsonl(make_cases(30), path)
    return path


def _extra_cases(n: int, offset: int) -> list[Any]:
    """Extra training cases that are not copies of any held-out case (each has its own note;
    the generator's findings repeat, and identical extra cases are refused)."""
    return [
        c.model_copy(update={"text": f"extra release note {offset + i}"})
        for i, c in enumerate(make_cases(n, offset=offset))
    ]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The error line, after any timestamped progress lines (stderr is no terminal here)."""
    lines = capsys.readouterr().err.strip().splitlines()
    err = "\n".join(x for x in lines if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ ", x))
    assert err.startswith("feddx: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_train_writes_adapter_and_result(
    model_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "train.toml"
    config.write_text("learning_rate = 0.01\nbatch_size = 4\n[lora]\nrank = 4\n")
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        f"jsonl:{data_file}",
        "--model",
        str(model_dir),
        "--config",
        str(config),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--top-layers",
        "1",
    ]
    assert main(argv) == 0
    assert "adapter saved to" in capsys.readouterr().out
    result = json.loads((out / "train_result.json").read_text())
    assert result["n_train"] + result["n_held_out"] == 30 and result["n_held_out"] > 0
    assert result["result"]["steps"] == 2 * 6  # 24 training cases, batch 4
    assert result["config"]["lora"] == {**result["config"]["lora"], "rank": 4, "top_layers": 1}
    # The adapter loads for the same base model, from OUT or OUT/adapter.
    from feddx.model.loading import load_base_model

    loaded = load_base_model(str(model_dir))
    # The adapter records the modules "auto" resolved to (Llama: q_proj and v_proj).
    expected = LoraSpec(rank=4, top_layers=1, target_modules=("q_proj", "v_proj"))
    assert adapter_lora_spec(out) == expected
    net = attach_lora(loaded.model, adapter_lora_spec(out))
    info = load_adapter(net, out, base_fingerprint=loaded.fingerprint)
    assert info.max_prompt_tokens == 320 and info.metadata["n_train"] == result["n_train"]
    assert info.temperature == 1.0 and info.temperature_source is None  # nothing fitted
    # Running again resumes the finished run instead of training anew.
    assert main(argv) == 0
    again = json.loads((out / "train_result.json").read_text())
    assert again["result"]["loss_history"] == result["result"]["loss_history"]


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ("epochs: 2\nlearnin_rate: 0.1\n", "unknown setting 'learnin_rate'"),
        ("lora:\n  rank: zero\n", "lora.rank must be int"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(
    model_dir: Path,
    data_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    config_text: str,
    message: str,
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(config_text)
    argv = [
        "train",
        "--data",
        f"jsonl:{data_file}",
        "--model",
        str(model_dir),
        "--config",
        str(config),
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert message in err and str(config) in err


def test_empty_or_missing_data_is_one_line(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    base = ["--model", str(model_dir), "--out", str(tmp_path / "run")]
    assert main(["train", "--data", f"jsonl:{empty}", *base]) == 2
    assert "dataset is empty" in _one_line_error(capsys)
    assert main(["train", "--data", f"jsonl:{tmp_path / 'nope.jsonl'}", *base]) == 2
    assert "not found" in _one_line_error(capsys)
    unlabeled = tmp_path / "unlabeled.jsonl"
    unlabeled.write_text('{"case_id": "a", "text": "cough"}\n')
    assert main(["train", "--data", f"jsonl:{unlabeled}", *base]) == 2
    assert "no case has a label" in _one_line_error(capsys)
    assert main(["train", "--data", "jsonl:x", "--out", "o", "--learning-rate", "0"]) == 2
    assert "learning_rate must be > 0" in _one_line_error(capsys)


def test_extra_data_trains_on_more_cases_and_must_share_the_labels(
    model_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra.jsonl"
    write_jsonl(_extra_cases(6, offset=100), extra)
    out = tmp_path / "run"
    base = ["train", "--data", f"jsonl:{data_file}", "--model", str(model_dir), "--out", str(out)]
    argv = [*base, "--extra-data", f"jsonl:{extra}", "--max-steps", "1", "--top-layers", "1"]
    assert main(argv) == 0
    capsys.readouterr()  # the run's progress lines (stderr is no terminal here)
    meta = json.loads((out / "train_result.json").read_text())
    assert meta["extra_data"] == {f"jsonl:{extra}": 6}
    assert meta["n_train"] == 24 + 6  # the 80% training split of 30, plus every extra case

    alien = make_cases(2)
    alien = [
        c.model_copy(update={"label": c.label.model_copy(update={"diagnosis": "Gout"})})
        for c in alien
    ]  # type: ignore[union-attr]
    odd = tmp_path / "odd.jsonl"
    write_jsonl(alien, odd)
    assert main([*base, "--extra-data", f"jsonl:{odd}"]) == 2
    err = _one_line_error(capsys)
    assert "1 label(s) do not occur" in err and "'Gout'" in err


def test_extra_per_label_caps_each_diagnosis_of_the_pooled_extra_data(
    model_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n_labels = len({c.label.diagnosis for c in make_cases(30) if c.label})
    extra_a, extra_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl(_extra_cases(3 * n_labels, offset=100), extra_a)  # 3 of each diagnosis
    write_jsonl(_extra_cases(n_labels, offset=200), extra_b)  # 1 of each
    out = tmp_path / "run"
    argv = ["train", "--data", f"jsonl:{data_file}", "--model", str(model_dir), "--out", str(out)]
    argv += ["--extra-data", f"jsonl:{extra_a}", "--extra-data", f"jsonl:{extra_b}"]
    assert main([*argv, "--extra-per-label", "2", "--max-steps", "1", "--top-layers", "1"]) == 0
    meta = json.loads((out / "train_result.json").read_text())
    assert meta["extra_data"]["kept_after_per_label_cap"] == 2 * n_labels  # pooled, then capped
    assert meta["n_train"] == 24 + 2 * n_labels

    assert (
        main(["train", "--data", f"jsonl:{data_file}", "--out", "o", "--extra-per-label", "2"]) == 2
    )
    assert "--extra-per-label needs --extra-data" in capsys.readouterr().err


def test_candidate_loss_trains_against_the_candidate_list(
    model_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("answer_loss: candidates\nbatch_size: 4\n")
    out = tmp_path / "run"
    base = ["train", "--data", f"jsonl:{data_file}", "--model", str(model_dir), "--out", str(out)]
    argv = [*base, "--config", str(config), "--max-steps", "2", "--top-layers", "1"]
    assert main(argv) == 0
    result = json.loads((out / "train_result.json").read_text())
    assert result["config"]["answer_loss"] == "candidates"
    assert result["result"]["steps"] == 2

    # A --candidates file without a training label is one clear line.
    short = tmp_path / "candidates.txt"
    short.write_text("Pneumonia\nAsthma\n")
    assert main([*argv, "--no-resume", "--candidates", str(short)]) == 2
    err = _one_line_error(capsys)
    assert "outside the 2 candidates" in err


def test_train_seed_and_augmentation_reach_the_run(
    model_dir: Path, data_file: Path, tmp_path: Path
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("seed: 0\naugment:\n  copies: 1\n  drop_finding: 0.3\n")
    out = tmp_path / "run"
    argv = ["train", "--data", f"jsonl:{data_file}", "--model", str(model_dir), "--out", str(out)]
    argv += ["--config", str(config), "--max-steps", "1", "--top-layers", "1"]
    assert main([*argv, "--train-seed", "7"]) == 0
    result = json.loads((out / "train_result.json").read_text())
    assert result["config"]["seed"] == 7
    assert result["config"]["augment"]["copies"] == 1
    assert result["result"]["stats"]["augmented_examples"] == result["n_train"]


def test_extra_cases_identical_to_held_out_ones_are_refused_or_dropped(
    model_dir: Path, data_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from feddx.data.cases import case_reference
    from feddx.data.split import stratified_split

    _, held_out = stratified_split(make_cases(30), test_fraction=0.2, seed=0)
    # Two held-out cases again under other ids, ages and letter case: still the same answer.
    copies = [
        c.model_copy(
            update={
                "case_id": f"copy-{i}",
                "age": 33,
                "findings": tuple(
                    f.model_copy(update={"name": f.name.upper()}) for f in c.findings
                ),
            }
        )
        for i, c in enumerate(held_out[:2])
    ]
    extra = tmp_path / "extra.jsonl"
    write_jsonl([*_extra_cases(3, offset=100), *copies], extra)
    out = tmp_path / "run"
    base = ["train", "--data", f"jsonl:{data_file}", "--model", str(model_dir), "--out", str(out)]
    argv = [*base, "--extra-data", f"jsonl:{extra}", "--max-steps", "1", "--top-layers", "1"]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert f"jsonl:{extra}: 2 of 5 cases are identical to held-out cases" in err
    assert f"the 4th case, {case_reference('copy-0')}" in err
    assert "copy-0" not in err.replace(case_reference("copy-0"), "")

    assert main([*argv, "--drop-overlapping-extra"]) == 0
    meta = json.loads((out / "train_result.json").read_text())
    assert meta["extra_data"][f"jsonl:{extra}: dropped, identical to held-out cases"] == 2
    assert meta["n_train"] == 24 + 3


def test_rich_progress_shows_each_stage_with_its_status() -> None:
    import io

    from rich.console import Console

    from feddx.cli.progress import RichTrainProgress, train_progress
    from feddx.train.trainer import NoProgress

    out = io.StringIO()
    with train_progress(Console(file=out, width=100)) as progress:
        assert isinstance(progress, RichTrainProgress)
        progress.started("caching frozen layers", 24)
        progress.advanced(20)
        progress.advanced(4)
        progress.finished()
        progress.started("training", 12, done=4)
        progress.advanced(1, info="loss 2.345  6.1 ex/s")
        progress.advanced(1)  # no info: the last status stays
        progress.finished()
        caching, training = progress.bar.tasks
    assert (caching.description, caching.completed, caching.total) == (
        "caching frozen layers",
        24,
        24,
    )
    assert (training.completed, training.total) == (6, 12)
    assert training.fields["info"] == "loss 2.345  6.1 ex/s"
    assert "training" in out.getvalue() and "6/12" in out.getvalue()
    with train_progress(enabled=False) as quiet:
        assert isinstance(quiet, NoProgress)
