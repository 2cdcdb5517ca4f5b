"""The demo's run folder: a stage is finished exactly when its entry is written and its
artefacts exist, and a forced rerun drops the old entry first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feddx.demo.runfolder import RunFolder
from feddx.errors import ConfigError, DataError


def _folder(tmp_path: Path) -> RunFolder:
    folder = RunFolder(tmp_path / "run")
    folder.check_config({"seed": 0}, force=False)
    return folder


def test_a_stage_is_finished_only_with_its_entry_and_artefacts(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    assert not folder.finished("centralized")
    (folder.stage_dir("centralized") / "adapter").mkdir(parents=True)
    folder.record("centralized", {"top1": 0.5, "artefacts": ["centralized/adapter"]})
    assert RunFolder(folder.root).finished("centralized")  # read back from results.json
    (folder.stage_dir("centralized") / "adapter").rmdir()
    assert not RunFolder(folder.root).finished("centralized")  # an artefact is gone


def test_forget_drops_the_entry_on_disk_before_a_forced_rerun(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    folder.record("zero-shot", {"top1": 0.4, "artefacts": []})
    folder.forget("zero-shot")
    on_disk = json.loads(folder.results_path.read_text())
    assert "zero-shot" not in on_disk["stages"] and not folder.finished("zero-shot")
    folder.forget("zero-shot")  # nothing to drop: no error


def test_other_settings_are_refused_and_a_broken_file_is_named(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    with pytest.raises(ConfigError, match=r"seed 0 -> 1.*--force"):
        RunFolder(folder.root).check_config({"seed": 1}, force=False)
    folder.results_path.write_text("{not json")
    with pytest.raises(DataError, match=r"results\.json: not a readable demo results file"):
        RunFolder(folder.root)
