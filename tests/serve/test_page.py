"""The clinician page in a real headless browser (Debian's chromium driven by Playwright) against
a real uvicorn server: it loads, refuses a wrong key, signs in, submits a case and draws the
differential with the expected top diagnosis and the chain that answered.

Set ``FEDDX_PAGE_SCREENSHOT=docs/serve-page.png`` to save the screenshot the README shows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .test_app import expected_ranking
from .world import CASE, World

pytestmark = [pytest.mark.server, pytest.mark.browser]


def test_clinician_page_signs_in_and_charts_the_differential(
    browser: Any, server: Callable[..., str], world: World, tokenizer: Any, tmp_path: Path
) -> None:
    base = server()
    want = expected_ranking(tokenizer, world.sources["cleveland"], CASE)
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base)
    assert page.title() == "feddx · differential diagnosis"
    assert page.is_visible("#signin-panel") and page.is_hidden("#case-panel")

    page.fill("#key", world.keys["cleveland"] + "wrong")
    page.click("#signin")
    page.wait_for_selector("#signin-status.error")
    assert page.text_content("#signin-status") == "Key refused."
    assert page.is_hidden("#case-panel")

    page.fill("#key", world.keys["cleveland"])
    page.click("#signin")
    page.wait_for_selector("#case-panel", state="visible")
    assert page.text_content("#institution") == "cleveland · usa · tiny-llama"

    page.fill("#age", "63")
    page.select_option("#sex", "male")
    page.fill("#findings", "chest pain: asymptomatic\nresting BP: 145 mmHg\nexercise angina")
    page.click("#submit")
    page.wait_for_selector("#chart svg g.row")
    rows = page.eval_on_selector_all(
        "#chart g.row", "gs => gs.map(g => [g.dataset.name, Number(g.dataset.probability)])"
    )
    assert [name for name, _ in rows] == want
    assert page.get_attribute("#chart", "data-top") == want[0]
    probs = [p for _, p in rows]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-3
    labels = page.eval_on_selector_all("#chart text.label", "ts => ts.map(t => t.textContent)")
    assert all(("I25.10" in x or "Z03.89" in x) for x in labels)
    assert (
        page.text_content("#chain")
        == "Answered by global/v1 → regional/usa/v1 → institutional/cleveland/v1"
    )
    shot = tmp_path / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if target := os.environ.get("FEDDX_PAGE_SCREENSHOT"):
        shutil.copy(shot, target)

    # A key revoked while signed in: the next request is refused and the page signs out.
    from feddx.serve.security import KeyStore

    store = KeyStore(world.keys_file)
    key_id = world.keys["cleveland"].split("_")[1]
    store.revoke(key_id)
    page.click("#submit")
    page.wait_for_selector("#signin-panel", state="visible")
    assert page.text_content("#signin-status") == "Key refused."
    assert errors == []
