// The clinician page's words in English and Brazilian Portuguese. Only the page's own text is
// translated: diagnosis names, ICD-10 codes, adapter ids and institution names are data and
// stay exactly as the service sends them, in every language. The language is the user's choice
// (the switch, remembered in localStorage) or else the browser's (navigator.languages, the
// same preference that makes its Accept-Language header); English when neither is Portuguese.
"use strict";

const STRINGS = {
  "en": {
    "title": "feddx · differential diagnosis",
    "subtitle": "differential diagnosis",
    "language": "Language",
    "signout": "Sign out",
    "notice": "Decision support for a clinician: the page ranks a fixed list of candidate " +
      "diagnoses for the case entered. It does not diagnose, and the clinician decides.",
    "signin.title": "Sign in",
    "signin.key": "Institution API key",
    "signin.button": "Sign in",
    "signin.checking": "Checking the key…",
    "case.title": "Case",
    "case.tab": "Case",
    "case.tabFhir": "FHIR Bundle",
    "case.age": "Age",
    "case.sex": "Sex",
    "case.patientId": "Patient id (optional)",
    "case.language": "Case written in",
    "case.findings": "Findings, one per line",
    "case.findingsExamples": ["resting BP: 145 mmHg", "exercise angina", "no fever"],
    "case.note": "Note (optional)",
    "case.fhir": "FHIR R4 Bundle (JSON) of one patient",
    "case.submit": "Diagnose",
    "case.candidates": "{n} candidate diagnoses.",
    "case.loading": "The model is still loading.",
    "case.scoring": "Scoring…",
    "sex.unknown": "unknown",
    "sex.female": "female",
    "sex.male": "male",
    "sex.other": "other",
    "result.title": "Differential",
    "result.notice": "Probabilities over the candidate list only: a diagnosis that is not on " +
      "the list cannot appear. Decision support, not a diagnosis.",
    "result.chart": "Differential diagnosis bar chart",
    "result.answeredBy": "Answered by ",
    "result.baseOnly": "Answered by the base model alone (no adapter for this institution).",
    "result.skipped": "Skipped {what}",
    "result.timing": "{n} candidates · {total} ms (scoring {scoring} ms, batch of {batch})",
    "result.history": " · stored history used",
    "err.keyRefused": "Key refused.",
    "err.unreachable": "The service cannot be reached.",
    "err.badFhir": "The FHIR Bundle is not valid JSON.",
    "err.forbidden": "This key may not do that.",
    "err.tooLarge": "The request is too large.",
    "err.invalid": "The service refused the case as invalid",
    "err.rateLimited": "Too many requests: wait a moment and try again.",
    "err.unavailable": "The service is not ready (the model may still be loading)",
    "err.status": "The service answered with an error",
    "footer": "Decision support only: a ranked differential over a fixed candidate list, " +
      "not a diagnosis.",
  },
  "pt-BR": {
    "title": "feddx · diagnóstico diferencial",
    "subtitle": "diagnóstico diferencial",
    "language": "Idioma",
    "signout": "Sair",
    "notice": "Apoio à decisão clínica: a página ordena uma lista fixa de diagnósticos " +
      "candidatos para o caso informado. Ela não faz diagnóstico; quem decide é o profissional de saúde.",
    "signin.title": "Entrar",
    "signin.key": "Chave de API da instituição",
    "signin.button": "Entrar",
    "signin.checking": "Verificando a chave…",
    "case.title": "Caso",
    "case.tab": "Caso",
    "case.tabFhir": "Bundle FHIR",
    "case.age": "Idade",
    "case.sex": "Sexo",
    "case.patientId": "ID do paciente (opcional)",
    "case.language": "Idioma do caso",
    "case.findings": "Achados, um por linha",
    "case.findingsExamples": ["pressão arterial em repouso: 145 mmHg", "angina ao esforço",
      "sem febre"],
    "case.note": "Observação (opcional)",
    "case.fhir": "Bundle FHIR R4 (JSON) de um paciente",
    "case.submit": "Diagnosticar",
    "case.candidates": "{n} diagnósticos candidatos.",
    "case.loading": "O modelo ainda está carregando.",
    "case.scoring": "Calculando…",
    "sex.unknown": "não informado",
    "sex.female": "feminino",
    "sex.male": "masculino",
    "sex.other": "outro",
    "result.title": "Diagnóstico diferencial",
    "result.notice": "Probabilidades apenas sobre a lista de candidatos: um diagnóstico fora " +
      "da lista não pode aparecer. Apoio à decisão, não um diagnóstico.",
    "result.chart": "Gráfico de barras do diagnóstico diferencial",
    "result.answeredBy": "Respondido por ",
    "result.baseOnly": "Respondido apenas pelo modelo base (nenhum adaptador para esta " +
      "instituição).",
    "result.skipped": "Ignorado: {what}",
    "result.timing": "{n} candidatos · {total} ms (cálculo {scoring} ms, lote de {batch})",
    "result.history": " · histórico armazenado usado",
    "err.keyRefused": "Chave recusada.",
    "err.unreachable": "Não foi possível acessar o serviço.",
    "err.badFhir": "O Bundle FHIR não é um JSON válido.",
    "err.forbidden": "Esta chave não tem permissão para isso.",
    "err.tooLarge": "A requisição é grande demais.",
    "err.invalid": "O serviço recusou o caso como inválido",
    "err.rateLimited": "Requisições demais: aguarde um momento e tente de novo.",
    "err.unavailable": "O serviço não está pronto (o modelo pode ainda estar carregando)",
    "err.status": "O serviço respondeu com um erro",
    "footer": "Apenas apoio à decisão: um diagnóstico diferencial ordenado sobre uma lista " +
      "fixa de candidatos, não um diagnóstico.",
  },
};

const LANG_KEY = "feddx.lang";

// The first of the saved choice and the browser's languages that the page speaks.
function pickLanguage(saved, browserLanguages) {
  for (const tag of [saved, ...(browserLanguages || [])]) {
    const lower = String(tag || "").toLowerCase();
    if (lower.startsWith("pt")) return "pt-BR";
    if (lower.startsWith("en")) return "en";
  }
  return "en";
}

let currentLang = "en";

// t("case.candidates", {n: 2}) -> "2 candidate diagnoses."; a key missing in Portuguese falls
// back to English, never to the bare key.
function t(key, params) {
  const table = STRINGS[currentLang] || STRINGS.en;
  let text = key in table ? table[key] : STRINGS.en[key];
  if (text === undefined) return key;
  if (params && typeof text === "string") {
    text = text.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
  }
  return text;
}

function number(value, digits) {
  return new Intl.NumberFormat(currentLang, {
    minimumFractionDigits: digits, maximumFractionDigits: digits,
  }).format(value);
}

// Every element marked data-i18n gets its text; the findings label is built from its parts
// (its examples are <code>), so no translated string is ever parsed as HTML.
function translatePage() {
  document.documentElement.lang = currentLang;
  for (const node of document.querySelectorAll("[data-i18n]")) {
    node.textContent = t(node.dataset.i18n);
  }
  for (const node of document.querySelectorAll("[data-i18n-html]")) {
    const key = node.dataset.i18nHtml;
    const parts = [t(key) + " ("];
    t(key + "Examples").forEach((example, i) => {
      if (i) parts.push(", ");
      const code = document.createElement("code");
      code.textContent = example;
      parts.push(code);
    });
    parts.push(")");
    node.replaceChildren(...parts);
  }
  const select = document.getElementById("lang");
  if (select) select.value = currentLang;
}

function setLanguage(lang, remember) {
  currentLang = lang in STRINGS ? lang : "en";
  if (remember) {
    try { localStorage.setItem(LANG_KEY, currentLang); } catch (_) { /* storage disabled */ }
  }
  translatePage();
}

function savedLanguage() {
  try { return localStorage.getItem(LANG_KEY); } catch (_) { return null; }
}
