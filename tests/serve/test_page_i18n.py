"""The clinician page speaks the browser's language (Brazilian Portuguese or English), has a
switch that is remembered, translates every word of its own, and leaves the data alone:
diagnosis names, ICD-10 codes and adapter ids read the same in both languages. Debian's
chromium driven by Playwright against a real uvicorn server with the tiny model.

Set ``FEDDX_PAGE_SCREENSHOT_PTBR=docs/img/clinician-ptbr.png`` to save the screenshot the README
shows (the pt-BR page with a real answer).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from feddx.data.uci_heart import ICD10

from .world import World

pytestmark = [pytest.mark.server, pytest.mark.browser]

CHAIN = "global/v1 → regional/usa/v1 → institutional/cleveland/v1"
# Words that are the same in both languages, or not words: never counted as untranslated.
SHARED = {"feddx", "FHIR", "ms"}


def _open(browser: Any, base: str, locale: str) -> tuple[Any, list[str]]:
    context = browser.new_context(locale=locale, viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base)
    return page, errors


def _sign_in_and_diagnose(page: Any, key: str, findings: str) -> list[str]:
    page.fill("#key", key)
    page.click("#signin")
    page.wait_for_selector("#case-panel", state="visible")
    page.fill("#age", "63")
    page.select_option("#sex", "male")
    page.fill("#findings", findings)
    page.click("#submit")
    page.wait_for_selector("#chart svg g.row")
    labels: list[str] = page.eval_on_selector_all(
        "#chart text.label", "ts => ts.map(t => t.textContent)"
    )
    return labels


def _save_small(shot: Path, target: Path) -> None:
    """The README's copy: 96 flat colours (text and bars stay sharp), about a third the bytes."""
    from PIL import Image

    with Image.open(shot) as image:
        small = image.convert("RGB").quantize(
            colors=96, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    small.save(target, optimize=True)


def _english_left_over(page: Any) -> list[str]:
    """The English strings of the page's own dictionary still visible on a pt-BR page."""
    english: list[str] = page.evaluate("Object.values(STRINGS.en).flat().filter(s => s.length > 3)")
    visible: str = page.evaluate("document.body.innerText")
    return [s for s in english if s not in SHARED and s.strip(" ·()") in visible]


def test_portuguese_browser_gets_the_portuguese_page(
    browser: Any, server: Callable[..., str], world: World, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page, errors = _open(browser, server(), "pt-BR")
    assert page.evaluate("navigator.languages[0]") == "pt-BR"
    assert page.title() == "feddx · diagnóstico diferencial"
    assert page.get_attribute("html", "lang") == "pt-BR"
    assert page.input_value("#lang") == "pt-BR"
    assert page.text_content("#signin-panel h2") == "Entrar"
    assert "não faz diagnóstico" in page.text_content("#notice")
    assert page.text_content("footer").startswith("Apenas apoio à decisão")
    # every dictionary key exists in both languages
    assert page.evaluate(
        "JSON.stringify(Object.keys(STRINGS.en).sort()) === "
        "JSON.stringify(Object.keys(STRINGS['pt-BR']).sort())"
    )

    page.fill("#key", world.keys["cleveland"] + "wrong")
    page.click("#signin")
    page.wait_for_selector("#signin-status.error")
    assert page.text_content("#signin-status") == "Chave recusada."

    findings = "dor torácica: assintomática\npressão arterial em repouso: 145 mmHg\nsem febre"
    labels = _sign_in_and_diagnose(page, world.keys["cleveland"], findings)
    # the data is not translated: the candidates' names and ICD-10 codes as the service sent them
    assert sorted(labels) == sorted(f"{name}  {code}" for name, code in ICD10.items())
    assert page.text_content("#chain") == "Respondido por " + CHAIN
    assert "candidatos" in page.text_content("#timing")
    # the case goes out marked as Portuguese, so the prompt is asked in Portuguese
    assert page.input_value("#case-lang") == "pt-BR"
    assert page.evaluate("caseBody().case.language") == "pt-BR"
    values = page.eval_on_selector_all("#chart text.value", "ts => ts.map(t => t.textContent)")
    assert all("," in v and v.endswith("%") for v in values)  # 45,3% in pt-BR
    assert _english_left_over(page) == []
    # the Portuguese findings reached the service as findings ("sem febre": a negated one)
    parsed = page.evaluate("parseFinding('sem febre')")
    assert parsed == {"name": "febre", "negated": True}
    assert page.evaluate("parseFinding('temperatura: 38,5 °C')") == {
        "name": "temperatura",
        "value": 38.5,
        "unit": "°C",
    }

    # errors in Portuguese too: the page's own, and the service's refusal with its detail after
    page.click("#tab-fhir")
    page.fill("#fhir", "{")
    page.click("#submit")
    page.wait_for_selector("#case-status.error")
    assert page.text_content("#case-status") == "O Bundle FHIR não é um JSON válido."
    page.fill("#fhir", '{"resourceType": "Patient"}')
    page.click("#submit")
    # expect() polls from Playwright's own script: the page's CSP forbids the eval that a
    # string predicate of wait_for_function needs.
    expect(page.locator("#case-status")).to_contain_text("(4")
    refused = page.text_content("#case-status")
    assert refused.startswith("O serviço recusou o caso como inválido (4"), refused
    page.click("#tab-case")
    page.evaluate("say('case-status', null)")

    shot = tmp_path / "clinician-ptbr.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if target := os.environ.get("FEDDX_PAGE_SCREENSHOT_PTBR"):
        _save_small(shot, Path(target))
    assert errors == []


def test_english_browser_gets_english_and_the_switch_is_remembered(
    browser: Any, server: Callable[..., str], world: World
) -> None:
    base = server()
    page, errors = _open(browser, base, "en-US")
    assert page.title() == "feddx · differential diagnosis"
    assert page.get_attribute("html", "lang") == "en"
    assert page.text_content("#signin-panel h2") == "Sign in"
    findings = "chest pain: asymptomatic\nresting BP: 145 mmHg\nexercise angina"
    labels = _sign_in_and_diagnose(page, world.keys["cleveland"], findings)
    assert page.text_content("#chain") == "Answered by " + CHAIN
    assert page.evaluate("caseBody().case.language") is None  # English: the trained prompt

    # switched by hand: the static text, the status line and the drawn result all change,
    # the data in the chart does not
    page.select_option("#lang", "pt-BR")
    assert page.title() == "feddx · diagnóstico diferencial"
    assert page.text_content("#chain") == "Respondido por " + CHAIN
    assert page.text_content("#case-panel h2") == "Caso"
    assert page.eval_on_selector_all("#chart text.label", "ts => ts.map(t => t.textContent)") == (
        labels
    )
    assert _english_left_over(page) == []
    # the case's language followed the page's, until the user sets it apart
    assert page.evaluate("caseBody().case.language") == "pt-BR"
    page.select_option("#case-lang", "en")
    page.select_option("#lang", "en")
    page.select_option("#lang", "pt-BR")
    assert page.evaluate("caseBody().case.language") is None

    # remembered over the browser's own language, and switched back
    page.reload()
    assert page.title() == "feddx · diagnóstico diferencial"
    page.select_option("#lang", "en")
    page.reload()
    assert page.text_content("#signin-panel h2") == "Sign in"
    assert page.text_content("#case-panel h2") == "Case"
    assert page.get_attribute("html", "lang") == "en"
    assert errors == []
