// The clinician page: sign in with the institution's key, send a case or a FHIR Bundle to
// POST /v1/diagnose, draw the differential as an inline SVG bar chart. No framework, no build
// step, nothing from another origin. The key lives in sessionStorage (gone with the tab).
"use strict";

const KEY = "feddx.key";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function headers() {
  return { "Authorization": "Bearer " + sessionStorage.getItem(KEY), "Content-Type": "application/json" };
}

function say(id, text, isError) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

// An error body is {"detail": "..."} or, for 422, {"detail": [{"loc": [...], "msg": "..."}]}.
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
  return response.status + ": " + detail;
}

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  say("signin-status", "Checking the key…");
  let response;
  try {
    response = await fetch("/v1/models", { headers: headers() });
  } catch (err) {
    say("signin-status", "The service cannot be reached.", true);
    return;
  }
  if (!response.ok) {
    sessionStorage.removeItem(KEY);
    const why = response.status === 401 ? "Key refused." : await problem(response);
    say("signin-status", why, true);
    return;
  }
  const info = await response.json();
  $("institution").textContent = info.institution + (info.region ? " · " + info.region : "") +
    " · " + info.model;
  $("who").hidden = false;
  $("signin-panel").hidden = true;
  $("case-panel").hidden = false;
  say("signin-status", "");
  say("case-status", info.ready ? info.candidates.length + " candidate diagnoses." : "The model is still loading.");
}

function signOut() {
  sessionStorage.removeItem(KEY);
  $("who").hidden = true;
  $("case-panel").hidden = true;
  $("result-panel").hidden = true;
  $("signin-panel").hidden = false;
  $("key").value = "";
}

// "resting BP: 145 mmHg" -> {name, value: 145, unit}; "no fever" -> negated; "exercise angina".
function parseFinding(line) {
  const text = line.trim();
  if (!text) return null;
  const colon = text.indexOf(":");
  if (colon < 0) {
    if (/^no\s+/i.test(text)) return { name: text.replace(/^no\s+/i, ""), negated: true };
    return { name: text };
  }
  const name = text.slice(0, colon).trim();
  const rest = text.slice(colon + 1).trim();
  const m = rest.match(/^(-?\d+(?:\.\d+)?)\s*(.*)$/);
  if (m) {
    const finding = { name: name, value: Number(m[1]) };
    if (m[2]) finding.unit = m[2];
    return finding;
  }
  if (/^(yes|true|present)$/i.test(rest)) return { name: name, value: true };
  if (/^(no|false|absent)$/i.test(rest)) return { name: name, value: false };
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
    say("case-status", "The FHIR Bundle is not valid JSON.", true);
    return;
  }
  $("submit").disabled = true;
  say("case-status", "Scoring…");
  try {
    const response = await fetch("/v1/diagnose", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (response.status === 401) {
      signOut();
      say("signin-status", "Key refused.", true);
      return;
    }
    if (!response.ok) {
      say("case-status", await problem(response), true);
      return;
    }
    show(await response.json());
    say("case-status", "");
  } catch (err) {
    say("case-status", "The service cannot be reached.", true);
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
    "aria-label": "Differential diagnosis bar chart" });
  differential.forEach((d, i) => {
    const y = 4 + i * rowH;
    const g = el("g", { class: "row", "data-name": d.name, "data-probability": d.probability.toFixed(4) });
    const label = el("text", { x: 0, y: y + 19, class: "label" }, d.name);
    if (d.icd10) label.appendChild(el("tspan", { class: "code" }, "  " + d.icd10));
    g.appendChild(label);
    g.appendChild(el("rect", { x: labelW, y: y + 5, width: barW, height: rowH - 10, rx: 3, class: "track" }));
    g.appendChild(el("rect", { x: labelW, y: y + 5, width: Math.max(1, barW * d.probability), height: rowH - 10,
      rx: 3, class: i === 0 ? "bar top" : "bar" }));
    g.appendChild(el("text", { x: labelW + barW + 8, y: y + 19, class: "value" }, (100 * d.probability).toFixed(1) + "%"));
    svg.appendChild(g);
  });
  return svg;
}

function show(result) {
  const box = $("chart");
  box.replaceChildren(chart(result.differential));
  box.dataset.top = result.differential.length ? result.differential[0].name : "";
  const chain = $("chain");
  chain.replaceChildren();
  if (result.chain.adapters.length) {
    chain.append("Answered by ");
    result.chain.adapters.forEach((a, i) => {
      if (i) chain.append(" → ");
      const code = document.createElement("code");
      code.textContent = a.id;
      chain.append(code);
    });
  } else {
    chain.append("Answered by the base model alone (no adapter for this institution).");
  }
  const list = $("fallbacks");
  list.replaceChildren(...result.chain.fallbacks.map((f) => {
    const li = document.createElement("li");
    li.textContent = "Skipped " + f;
    return li;
  }));
  $("timing").textContent = `${result.candidates} candidates · ${result.timing.total_ms.toFixed(0)} ms` +
    ` (scoring ${result.timing.scoring_ms.toFixed(0)} ms, batch of ${result.timing.batch_cases})` +
    (result.history_used ? " · stored history used" : "");
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

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("key").value.trim()); });
  $("signout").addEventListener("click", signOut);
  $("case-form").addEventListener("submit", diagnose);
  $("tab-case").addEventListener("click", () => tab(false));
  $("tab-fhir").addEventListener("click", () => tab(true));
  const saved = sessionStorage.getItem(KEY);
  if (saved) signIn(saved);
});
