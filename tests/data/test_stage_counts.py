"""The de-identification summary counts what the output holds (issue 26 item 6): a loader
that redacts while it reads (FHIR) leaves placeholders the stage did not put there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from feddx.data.deid import DeidConfig
from feddx.data.schema import Case, Label
from feddx.data.stage import DeidStage


@pytest.fixture()
def stage(tmp_path: Path) -> Iterator[DeidStage]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDDX_CACHE", str(tmp_path))
        yield DeidStage(config=DeidConfig(key="test-key"))


def test_texts_already_redacted_by_the_loader_are_counted(stage: DeidStage) -> None:
    loaded = [
        # As the FHIR loader leaves a note: the patient's names and dates already replaced.
        Case(
            case_id="enc-1",
            text="[NAME] was seen on [DATE] for chest pain; [NAME] smokes.",
            label=Label(diagnosis="Angina"),
        ),
        Case(case_id="enc-2", text="Chest pain on exertion.", label=Label(diagnosis="Angina")),
        Case(case_id="enc-3", text=None, label=Label(diagnosis="Angina")),
    ]
    out = list(stage.cases(loaded))
    assert out[0].text == loaded[0].text  # nothing left for the stage to replace
    assert stage.n_text_redacted == 1  # was 0: only texts the stage changed were counted
    assert stage.placeholders["[NAME]"] == 2 and stage.placeholders["[DATE]"] == 1
