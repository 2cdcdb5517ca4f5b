// The clinician page: sign in with the institution's key, send a case or a FHIR Bundle to
// POST /v1/diagnose, draw the differential as an inline SVG bar chart. No framework, no build
// step, nothing from another origin. The key lives in sessionStorage (gone with the tab).
// Every word shown comes from i18n.js's t(); switching the language redraws what is on screen.
"use strict";

const KEY = "feddx.key";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function headers() {
  return { "Authorization": "Bearer " + sessionStorage.getItem(KEY), "Content-Type": "application/json" };
}

// A status line is kept as a message (key, parameters, and any detail the service sent) and
// rendered in the current language, so the language switch can redraw it.
const shown = { messages: {}, result: null };

function render(message) {
  if (!message) return "";
  const text = message.key ? t(message.key, message.params) : "";
  return message.detail ? text + " (" + message.detail + ")" : text;
}

function say(id, message, isError) {
  shown.messages[id] = message ? { ...message, isError: Boolean(isError) } : null;
  const el = $(id);
  el.textContent = render(message);
  el.classList.toggle("error", Boolean(isError));
}

const STATUS_KEYS = { 401: "err.keyRefused", 403: "err.forbidden", 413: "err.tooLarge",
  422: "err.invalid", 429: "err.rateLimited", 503: "err.unavailable" };

// An error body is {"detail": "..."} or, for 422, {"detail": [{"loc": [...], "msg": "..."}]}.
// The page says what happened in the user's language; the service's own detail (English, and
// naming fields as the API does) follows in parentheses with the status code.
async function problem(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) {
      detail = body.detail.map((e) => e.loc.join(".") + ": " + e.msg).join("; ");
    } else if (body.detail) {
      detail = body.detail;
    }
  } catch (_) { /* not JSON */ }
  return { key: STATUS_KEYS[response.status] || "err.status",
    detail: response.status + (detail ? ": " + detail : "") };
}

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  say("signin-status", { key: "signin.checking" });
  let response;
  try {
    response = await fetch("/v1/models", { headers: headers() });
  } catch (err) {
    say("signin-status", { key: "err.unreachable" }, true);
    return;
  }
  if (!response.ok) {
    sessionStorage.removeItem(KEY);
    const why = response.status === 401 ? { key: "err.keyRefused" } : await problem(response);
    say("signin-status", why, true);
    return;
  }
  const info = await response.json();
  $("institution").textContent = info.institution + (info.region ? " · " + info.region : "") +
    " · " + info.model;
  $("who").hidden = false;
  $("signin-panel").hidden = true;
  $("case-panel").hidden = false;
  say("signin-status", null);
  say("case-status", info.ready ? { key: "case.candidates", params: { n: info.candidates.length } }
    : { key: "case.loading" });
}

function signOut() {
  sessionStorage.removeItem(KEY);
  $("who").hidden = true;
  $("case-panel").hidden = true;
  $("result-panel").hidden = true;
  shown.result = null;
  $("signin-panel").hidden = false;
  $("key").value = "";
}

// "resting BP: 145 mmHg" -> {name, value: 145, unit}; "no fever" -> negated; "exercise angina".
// Portuguese as well: "sem febre" / "não ..." negate, "sim"/"presente" and "não"/"ausente" are
// booleans, and a decimal comma reads as a point ("38,5 °C").
function parseFinding(line) {
  const text = line.trim();
  if (!text) return null;
  const colon = text.indexOf(":");
  if (colon < 0) {
    const negation = /^(no|sem|não|nao)\s+/i;
    if (negation.test(text)) return { name: text.replace(negation, ""), negated: true };
    return { name: text };
  }
  const name = text.slice(0, colon).trim();
  const rest = text.slice(colon + 1).trim();
  const m = rest.match(/^(-?\d+(?:[.,]\d+)?)\s*(.*)$/);
  if (m) {
    const finding = { name: name, value: Number(m[1].replace(",", ".")) };
    if (m[2]) finding.unit = m[2];
    return finding;
  }
  if (/^(yes|true|present|sim|presente)$/i.test(rest)) return { name: name, value: true };
  if (/^(no|false|absent|não|nao|ausente)$/i.test(rest)) return { name: name, value: false };
  return { name: name, value: rest };
}

function caseBody() {
  const body = {};
  const pid = $("patient-id").value.trim();
  if (pid) body.patient_id = pid;
  if (!$("fhir-fields").hidden) {
    body.fhir = JSON.parse($("fhir").value);
    return body;
  }
  const c = { case_id: "page-" + Date.now().toString(36) };
  const age = $("age").value;
  if (age !== "") c.age = Number(age);
  if ($("sex").value) c.sex = $("sex").value;
  c.findings = $("findings").value.split("\n").map(parseFinding).filter(Boolean);
  const note = $("note").value.trim();
  if (note) c.text = note;
  // The language the case is written in picks the prompt's words (feddx.model.prompt); English
  // is sent as no language, so it gets exactly the prompt the adapters were trained on.
  if ($("case-lang").value !== "en") c.language = $("case-lang").value;
  body.case = c;
  body.top_k = 10;
  return body;
}

async function diagnose(event) {
  event.preventDefault();
  let body;
  try {
    body = caseBody();
  } catch (err) {
    say("case-status", { key: "err.badFhir" }, true);
    return;
  }
  $("submit").disabled = true;
  say("case-status", { key: "case.scoring" });
  try {
    const response = await fetch("/v1/diagnose", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (response.status === 401) {
      signOut();
      say("signin-status", { key: "err.keyRefused" }, true);
      return;
    }
    if (!response.ok) {
      say("case-status", await problem(response), true);
      return;
    }
    show(await response.json());
    say("case-status", null);
  } catch (err) {
    say("case-status", { key: "err.unreachable" }, true);
  } finally {
    $("submit").disabled = false;
  }
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function chart(differential) {
  const rowH = 30, labelW = 330, barW = 480, valueW = 70, width = labelW + barW + valueW;
  const svg = el("svg", { viewBox: `0 0 ${width} ${rowH * differential.length + 8}`, role: "img",
    "aria-label": t("result.chart") });
  differential.forEach((d, i) => {
    const y = 4 + i * rowH;
    const g = el("g", { class: "row", "data-name": d.name, "data-probability": d.probability.toFixed(4) });
    const label = el("text", { x: 0, y: y + 19, class: "label" }, d.name);
    if (d.icd10) label.appendChild(el("tspan", { class: "code" }, "  " + d.icd10));
    g.appendChild(label);
    g.appendChild(el("rect", { x: labelW, y: y + 5, width: barW, height: rowH - 10, rx: 3, class: "track" }));
    g.appendChild(el("rect", { x: labelW, y: y + 5, width: Math.max(1, barW * d.probability), height: rowH - 10,
      rx: 3, class: i === 0 ? "bar top" : "bar" }));
    g.appendChild(el("text", { x: labelW + barW + 8, y: y + 19, class: "value" }, number(100 * d.probability, 1) + "%"));
    svg.appendChild(g);
  });
  return svg;
}

function show(result) {
  shown.result = result;
  const box = $("chart");
  box.replaceChildren(chart(result.differential));
  box.dataset.top = result.differential.length ? result.differential[0].name : "";
  const chain = $("chain");
  chain.replaceChildren();
  if (result.chain.adapters.length) {
    chain.append(t("result.answeredBy"));
    result.chain.adapters.forEach((a, i) => {
      if (i) chain.append(" → ");
      const code = document.createElement("code");
      code.textContent = a.id;
      chain.append(code);
    });
  } else {
    chain.append(t("result.baseOnly"));
  }
  const list = $("fallbacks");
  list.replaceChildren(...result.chain.fallbacks.map((f) => {
    const li = document.createElement("li");
    li.textContent = t("result.skipped", { what: f });
    return li;
  }));
  $("timing").textContent = t("result.timing", { n: result.candidates,
    total: number(result.timing.total_ms, 0), scoring: number(result.timing.scoring_ms, 0),
    batch: result.timing.batch_cases }) + (result.history_used ? t("result.history") : "");
  $("result-panel").hidden = false;
}

function tab(fhir) {
  $("fhir-fields").hidden = !fhir;
  $("case-fields").hidden = fhir;
  $("tab-fhir").classList.toggle("active", fhir);
  $("tab-case").classList.toggle("active", !fhir);
  $("tab-fhir").setAttribute("aria-selected", String(fhir));
  $("tab-case").setAttribute("aria-selected", String(!fhir));
}

let caseLanguageChosen = false;

// The language switch: redraw the static text, the status lines and the result on screen.
function switchLanguage(lang) {
  setLanguage(lang, true);
  if (!caseLanguageChosen) $("case-lang").value = currentLang;
  for (const [id, message] of Object.entries(shown.messages)) say(id, message, message && message.isError);
  if (shown.result) show(shown.result);
}

document.addEventListener("DOMContentLoaded", () => {
  setLanguage(pickLanguage(savedLanguage(), navigator.languages || [navigator.language]), false);
  $("lang").addEventListener("change", (e) => switchLanguage(e.target.value));
  // The case's language follows the page's until the user sets it apart.
  $("case-lang").value = currentLang;
  $("case-lang").addEventListener("change", () => { caseLanguageChosen = true; });
  $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("key").value.trim()); });
  $("signout").addEventListener("click", signOut);
  $("case-form").addEventListener("submit", diagnose);
  $("tab-case").addEventListener("click", () => tab(false));
  $("tab-fhir").addEventListener("click", () => tab(true));
  const saved = sessionStorage.getItem(KEY);
  if (saved) signIn(saved);
});
