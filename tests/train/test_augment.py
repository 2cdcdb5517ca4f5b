"""Finding-dropout augmentation: what the copies hold, determinism, config, and the trainer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from feddx.data.schema import Case, Finding, History, Label
from feddx.errors import ConfigError
from feddx.model.adapter import LoraSpec
from feddx.train.augment import augment_cases, drop_history, sentences
from feddx.train.config import AugmentSpec, DPConfig, TrainConfig
from feddx.train.trainer import train_adapter


def _case(i: int, n_findings: int) -> Case:
    return Case(
        case_id=f"c{i}",
        age=40,
        sex="female",
        text="free text stays",
        findings=tuple(Finding(name=f"f{i}-{j}") for j in range(n_findings)),
        label=Label(diagnosis=f"dx{i % 3}"),
    )


def test_copies_drop_findings_keep_the_rest_and_follow_the_originals() -> None:
    cases = [_case(i, 12) for i in range(20)]
    out = augment_cases(cases, AugmentSpec(copies=2, drop_finding=0.3), seed=0)
    assert out[:20] == cases  # originals first, unchanged
    copies = out[20:]
    assert len(copies) == 40
    assert [c.case_id for c in copies[:2]] == ["c0~aug1", "c1~aug1"]
    assert copies[20].case_id == "c0~aug2"
    by_id = {c.case_id: c for c in cases}
    dropped = 0
    for copy in copies:
        source = by_id[copy.case_id.split("~")[0]]
        assert copy.label == source.label and copy.text == source.text
        assert copy.age == source.age and copy.sex == source.sex
        assert 1 <= len(copy.findings) <= len(source.findings)
        # A subsequence of the source's findings: order kept without shuffle_findings.
        it = iter(source.findings)
        assert all(f in it for f in copy.findings)
        dropped += len(source.findings) - len(copy.findings)
    rate = dropped / (40 * 12)
    assert 0.2 < rate < 0.4  # drop probability 0.3


def test_augmentation_is_deterministic_per_seed() -> None:
    cases = [_case(i, 8) for i in range(10)]
    spec = AugmentSpec(copies=1, drop_finding=0.5, shuffle_findings=True)
    assert augment_cases(cases, spec, seed=3) == augment_cases(cases, spec, seed=3)
    assert augment_cases(cases, spec, seed=3) != augment_cases(cases, spec, seed=4)


def test_shuffle_reorders_and_at_least_one_finding_survives() -> None:
    cases = [_case(i, 10) for i in range(10)]
    shuffled = augment_cases(
        cases, AugmentSpec(copies=1, drop_finding=0.0, shuffle_findings=True), 0
    )
    assert any(c.findings != s.findings for c, s in zip(cases, shuffled[10:], strict=True))
    assert all(
        set(c.findings) == set(s.findings) for c, s in zip(cases, shuffled[10:], strict=True)
    )
    harsh = augment_cases(cases, AugmentSpec(copies=3, drop_finding=0.99), 0)
    assert all(len(c.findings) >= 1 for c in harsh)


def test_cases_with_fewer_than_two_findings_are_not_copied() -> None:
    cases = [_case(0, 0), _case(1, 1), _case(2, 2)]
    out = augment_cases(cases, AugmentSpec(copies=2), 0)
    assert [c.case_id for c in out] == ["c0", "c1", "c2", "c2~aug1", "c2~aug2"]
    assert augment_cases(cases, AugmentSpec(copies=0), 0) == cases


def test_config_reads_validates_and_refuses_dp() -> None:
    config = TrainConfig.from_mapping({"augment": {"copies": 2, "drop_finding": 0.25}})
    assert config.augment == AugmentSpec(copies=2, drop_finding=0.25)
    assert TrainConfig.from_mapping(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"augment\.drop_finding must be in \[0, 1\)"):
        TrainConfig.from_mapping({"augment": {"drop_finding": 1.0}})
    with pytest.raises(ConfigError, match=r"unknown setting 'augment\.copy'"):
        TrainConfig.from_mapping({"augment": {"copy": 1}})
    with pytest.raises(ConfigError, match=r"augment\.copies cannot be combined with dp"):
        TrainConfig(augment=AugmentSpec(copies=1), dp=DPConfig())


def test_trainer_passes_over_the_originals_and_their_copies(
    make_model: Callable[..., Any], tokenizer: Any, cases: list[Case]
) -> None:
    config = TrainConfig(
        learning_rate=5e-3,
        batch_size=4,
        epochs=1,
        lora=LoraSpec(dropout=0.0),
        augment=AugmentSpec(copies=2, drop_finding=0.3),
    )
    result = train_adapter(make_model(), tokenizer, cases, config)
    assert result.stats["augmented_examples"] == 2 * len(cases)
    assert result.examples == 3 * len(cases)
    plain = train_adapter(make_model(), tokenizer, cases, config.replace(augment=AugmentSpec()))
    assert plain.stats["augmented_examples"] == 0 and plain.examples == len(cases)


def test_sentence_dropout_copies_free_text_cases_only_when_asked() -> None:
    note = "My skin itches. There are red patches on my arms! Do they spread? They do."
    case = Case(case_id="t", text=note, label=Label(diagnosis="psoriasis"))
    single = Case(case_id="s", text="Only one sentence here.", label=Label(diagnosis="x"))
    assert augment_cases([case, single], AugmentSpec(copies=2), 0) == [case, single]
    out = augment_cases([case, single], AugmentSpec(copies=40, drop_sentence=0.5), 0)
    copies = out[2:]
    assert len(copies) == 40 and all(c.case_id.startswith("t~aug") for c in copies)
    parts = sentences(note)
    assert parts[1] == "There are red patches on my arms!" and len(parts) == 4
    for copy in copies:
        kept = sentences(copy.text or "")
        assert kept and all(s in parts for s in kept)
        assert [parts.index(s) for s in kept] == sorted(parts.index(s) for s in kept)
    assert any(len(sentences(c.text or "")) < 4 for c in copies)


def _history_case(i: int) -> Case:
    history = History(prior_conditions=(f"condition {i}",)) if i % 4 else History()
    return _case(i, 2).model_copy(update={"history": history})


def test_history_dropout_drops_the_stated_fraction_deterministically() -> None:
    cases = [_history_case(i) for i in range(40)]  # 30 with a history, 10 without
    out = drop_history(cases, 0.5, seed=3)
    assert [c.case_id for c in out] == [c.case_id for c in cases]  # order and ids kept
    dropped = [a for a, b in zip(cases, out, strict=True) if a.history != b.history]
    assert len(dropped) == 15  # exactly round(0.5 * 30)
    assert all(not a.history.is_empty() for a in dropped)
    for a, b in zip(cases, out, strict=True):  # only the history changes
        assert b.model_copy(update={"history": a.history}) == a
    assert drop_history(cases, 0.5, seed=3) == out  # same seed, same cases dropped
    assert drop_history(cases, 0.5, seed=4) != out
    assert drop_history(cases, 0.0, seed=3) == cases
    assert all(c.history.is_empty() for c in drop_history(cases, 1.0, seed=3))
    with pytest.raises(ValueError, match=r"history dropout must be in \[0, 1\], got 1.5"):
        drop_history(cases, 1.5, seed=0)


def test_history_dropout_is_a_config_knob_the_trainer_renders(tokenizer: Any) -> None:
    from feddx.train.trainer import _encode_examples

    cfg = TrainConfig.from_mapping({"history-dropout": 1.0, "max_prompt_tokens": 256})
    assert cfg.history_dropout == 1.0
    with pytest.raises(ConfigError, match="history_dropout"):
        TrainConfig.from_mapping({"history_dropout": 2})
    cases = [_history_case(i) for i in range(1, 4)]
    bare = [c.model_copy(update={"history": History()}) for c in cases]
    with_history, _ = _encode_examples(cases, tokenizer, cfg.replace(history_dropout=0.0), None)
    without, _ = _encode_examples(cases, tokenizer, cfg, None)
    reference, _ = _encode_examples(bare, tokenizer, cfg, None)
    assert without == reference
    assert all(len(a) > len(b) for a, b in zip(with_history, without, strict=True))


def test_federated_and_personalize_configs_take_history_dropout() -> None:
    from feddx.federated.config import FederatedConfig
    from feddx.personalize.config import PersonalizeConfig

    fed = FederatedConfig.from_mapping({"history-dropout": 0.25})
    assert fed.train_config(seed=0).history_dropout == 0.25
    assert FederatedConfig.from_mapping({}).train_config(seed=0).history_dropout == 0.0
    personal = PersonalizeConfig.from_mapping({"data": "uci-heart", "history-dropout": 0.25})
    assert personal.history_dropout == 0.25
