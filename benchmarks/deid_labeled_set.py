"""Labeled evaluation sets for de-identification.

Two sources, each a list of :class:`LabeledDoc` (text + gold PHI spans + the identifiers a
registry would know about the patient, passed as ``extra_identifiers`` in one of the runs):

- :func:`synthetic_brazilian_records`: Portuguese clinical records generated from templates
  with a seed: valid CPFs (check digits), CNS numbers (DATASUS rule), RGs, CEPs, phones in
  the usual Brazilian forms, e-mails, dates in numeric and written forms, addresses, record
  numbers, ages, patients', relatives' and doctors' names (some behind cues, some not), and
  PHI-free clinical sentences full of numbers (doses, vitals, lab values, ICD codes) that
  must *not* be redacted. The generator's name and street lists are written here and are not
  used by the de-identifier.
- :func:`fhir_labeled_notes`: the Synthea notes of a FHIR bulk export (DocumentReference,
  base64). Gold spans are derived from the Patient resources: every occurrence of the
  patient's given/family names (NAME), ISO dates (DATE), ages over 89 (AGE) and any of the
  patient's phone numbers, SSN, licence/passport numbers or address lines (none occur in
  these notes, checked). Practitioner names are not in the note text.

Run ``python benchmarks/deid_labeled_set.py --write-fixture tests/fixtures/deid/synthetic_pt.jsonl``
to regenerate the small committed test sample (seed 7, 40 records).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def _words(text: str) -> tuple[str, ...]:
    """A whitespace-separated word list, kept as a string for readability."""
    return tuple(text.split())


@dataclass(frozen=True)
class GoldSpan:
    start: int
    end: int
    entity: str


@dataclass
class LabeledDoc:
    doc_id: str
    text: str
    spans: list[GoldSpan]
    extra_identifiers: tuple[str, ...] = ()
    source: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "doc_id": self.doc_id,
                "text": self.text,
                "spans": [[s.start, s.end, s.entity] for s in self.spans],
                "extra_identifiers": list(self.extra_identifiers),
                "source": self.source,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, line: str) -> LabeledDoc:
        d = json.loads(line)
        return cls(
            d["doc_id"],
            d["text"],
            [GoldSpan(a, b, e) for a, b, e in d["spans"]],
            tuple(d["extra_identifiers"]),
            d.get("source", ""),
        )


@dataclass
class _Builder:
    parts: list[str] = field(default_factory=list)
    spans: list[GoldSpan] = field(default_factory=list)
    pos: int = 0

    def text(self, s: str) -> None:
        self.parts.append(s)
        self.pos += len(s)

    def phi(self, s: str, entity: str) -> None:
        self.spans.append(GoldSpan(self.pos, self.pos + len(s), entity))
        self.text(s)

    def fill(self, template: str, values: dict[str, tuple[str, str | None]]) -> None:
        """``template`` with ``{slot}`` s filled; a slot whose entity is not None is gold PHI."""
        for piece in re.split(r"(\{\w+\})", template):
            if piece.startswith("{") and piece.endswith("}"):
                value, entity = values[piece[1:-1]]
                if entity is None:
                    self.text(value)
                else:
                    self.phi(value, entity)
            else:
                self.text(piece)

    def build(self) -> str:
        return "".join(self.parts)


# ------------------------------------------------------------------------------------------
# Brazilian identifiers
# ------------------------------------------------------------------------------------------


def cpf_digits(rng: random.Random) -> str:
    while True:
        base = [rng.randrange(10) for _ in range(9)]
        if len(set(base)) > 1:
            break
    d1 = sum(n * w for n, w in zip(base, range(10, 1, -1), strict=True)) * 10 % 11 % 10
    d2 = sum(n * w for n, w in zip([*base, d1], range(11, 1, -1), strict=True)) * 10 % 11 % 10
    return "".join(map(str, base)) + f"{d1}{d2}"


def format_cpf(d: str) -> str:
    return f"{d[:3]}.{d[3:6]}.{d[6:9]}-{d[9:]}"


def cns_digits(rng: random.Random) -> str:
    if rng.random() < 0.5:  # definitive: built from a PIS number (DATASUS algorithm)
        pis = str(rng.choice((1, 2))) + "".join(str(rng.randrange(10)) for _ in range(10))
        soma = sum(int(c) * (15 - i) for i, c in enumerate(pis))
        dv = 11 - soma % 11
        if dv == 11:
            dv = 0
        if dv == 10:
            soma += 2
            dv = 11 - soma % 11
            return f"{pis}001{dv}"
        return f"{pis}000{dv}"
    while True:  # provisional: starts with 7, 8 or 9, weighted sum multiple of 11
        head = str(rng.choice((7, 8, 9))) + "".join(str(rng.randrange(10)) for _ in range(13))
        last = -sum(int(c) * (15 - i) for i, c in enumerate(head)) % 11
        if last < 10:
            return head + str(last)


def format_cns(d: str) -> str:
    return f"{d[:3]} {d[3:7]} {d[7:11]} {d[11:]}"


FIRST_F = _words(
    """
    Maria Ana Francisca Antônia Adriana Juliana Márcia Fernanda Patrícia Aline Sandra
    Camila Amanda Bruna Jéssica Letícia Júlia Luciana Vanessa Mariana Gabriela Vera
    Beatriz Larissa Raimunda Tereza Helena Cecília Lívia Rosângela Simone Débora
    Cristiane Eliane Sônia
    """
)
FIRST_M = _words(
    """
    José João Antônio Francisco Carlos Paulo Pedro Lucas Luiz Marcos Luís Gabriel Rafael
    Daniel Marcelo Bruno Eduardo Felipe Raimundo Rodrigo Sebastião Thiago Gustavo
    Matheus Vinícius Leonardo Otávio Caio Henrique Benedito Joaquim Severino Ronaldo
    Wellington
    """
)
MIDDLE = _words(
    """
    Aparecida Cristina Eduarda Helena Luiza Henrique Augusto Vitor Miguel Carolina
    """
)
SURNAMES = _words(
    """
    Silva Santos Oliveira Souza Rodrigues Ferreira Alves Pereira Lima Gomes Costa
    Ribeiro Martins Carvalho Almeida Lopes Soares Fernandes Vieira Barbosa Rocha Dias
    Nascimento Andrade Moreira Nunes Marques Machado Mendes Freitas Cardoso Ramos
    Gonçalves Santana Teixeira Araújo Cavalcanti Monteiro Moura Correia Batista Campos
    Pinheiro Bezerra Farias
    """
)
PARTICLES = ("da", "de", "dos", "do")
STREETS = (
    "das Flores",
    "Augusta",
    "Sete de Setembro",
    "XV de Novembro",
    "Brigadeiro Faria Lima",
    "Dom Pedro II",
    "Barão de Mauá",
    "Santos Dumont",
    "Getúlio Vargas",
    "Tiradentes",
    "dos Andradas",
    "Marechal Deodoro",
    "Rio Branco",
    "São João",
    "Paulista",
    "Presidente Vargas",
    "Ipiranga",
    "Treze de Maio",
    "Boa Vista",
    "Conselheiro Furtado",
)
STREET_TYPES = ("Rua", "Av.", "Avenida", "Travessa", "Alameda", "R.", "Praça", "Estrada")
BAIRROS = (
    "Centro",
    "Jardim Paulista",
    "Vila Mariana",
    "Boa Viagem",
    "Copacabana",
    "Savassi",
    "Moinhos de Vento",
    "Aldeota",
    "Pituba",
    "Batel",
    "Jardim América",
    "Tatuapé",
)
CITIES = (
    ("São Paulo", "SP"),
    ("Rio de Janeiro", "RJ"),
    ("Belo Horizonte", "MG"),
    ("Recife", "PE"),
    ("Porto Alegre", "RS"),
    ("Fortaleza", "CE"),
    ("Salvador", "BA"),
    ("Curitiba", "PR"),
    ("Campinas", "SP"),
    ("Manaus", "AM"),
    ("Belém", "PA"),
    ("Goiânia", "GO"),
)
DOMAINS = ("gmail.com", "hotmail.com", "uol.com.br", "yahoo.com.br", "outlook.com", "bol.com.br")
DDD = ("11", "21", "31", "41", "51", "61", "71", "81", "85", "91", "92", "19", "27", "48")
MONTHS = _words(
    """
    janeiro fevereiro março abril maio junho julho agosto setembro outubro novembro
    dezembro
    """
)
MONTH_ABBR = ["jan", "fev", "mar", "abr", "mai", "jun", "jul", "ago", "set", "out", "nov", "dez"]
CONDITIONS = (
    "dor torácica em aperto",
    "dispneia aos médios esforços",
    "febre e tosse produtiva",
    "cefaleia holocraniana",
    "dor abdominal em fossa ilíaca direita",
    "edema de membros inferiores",
    "palpitações",
    "síncope",
    "disúria e polaciúria",
    "lombalgia",
)
CLINICAL_FILLER = (
    "PA 130/85 mmHg, FC 92 bpm, SatO2 96% em ar ambiente, Tax 37,8 °C.",
    "Hb 11,2 g/dL; leucócitos 12.400/mm³; plaquetas 250.000/mm³; PCR 48 mg/L.",
    "Em uso de losartana 50 mg 12/12h e metformina 850 mg 2x/dia.",
    "Refere dor 7/10 há 3 dias, sem irradiação.",
    "CID-10: I21.9. Escore HEART 6.",
    "Glicemia de jejum 126 mg/dL, HbA1c 7,4%.",
    "HAS há 10 anos, DM2 desde 2015, ex-tabagista (20 maços-ano).",
    "Peso 72,5 kg, altura 1,68 m, IMC 25,7 kg/m².",
    "ECG: ritmo sinusal, FC 78 bpm, supradesnivelamento de ST em V1-V4.",
    "Creatinina 1,3 mg/dL, ureia 45 mg/dL, K 4,8 mEq/L, Na 138 mEq/L.",
    "Prescrito AAS 100 mg/dia, atorvastatina 40 mg/noite e enoxaparina 1 mg/kg 12/12h.",
    "Glasgow 15, pupilas isocóricas e fotorreagentes.",
    "RX de tórax: consolidação em base direita. TC de crânio sem alterações agudas.",
    "Troponina 0,45 ng/mL (VR < 0,04). D-dímero 1.200 ng/mL.",
    "Retorno em 30 dias com exames. Orientado quanto a sinais de alarme.",
    "Vacinação em dia. Nega alergias medicamentosas.",
    "Gesta 3 Para 2 Aborto 1; DUM há 6 semanas.",
    "Escala de dor 10/10 na admissão, 3/10 após analgesia.",
)


class _Person:
    def __init__(self, rng: random.Random, female: bool | None = None) -> None:
        self.female = rng.random() < 0.5 if female is None else female
        self.first = rng.choice(FIRST_F if self.female else FIRST_M)
        parts = [self.first]
        if rng.random() < 0.4:
            parts.append(rng.choice(MIDDLE))
        if rng.random() < 0.35:
            parts.append(rng.choice(PARTICLES))
        parts.append(rng.choice(SURNAMES))
        if rng.random() < 0.5:
            parts.append(rng.choice(SURNAMES))
        self.full = " ".join(parts)
        self.last = parts[-1]


def _phone(rng: random.Random) -> tuple[str, str]:
    """(text, a cue to put before it or '')."""
    ddd = rng.choice(DDD)
    mobile = rng.random() < 0.7
    a = (
        ("9" + str(rng.randrange(6, 10)) + f"{rng.randrange(1000):03d}")
        if mobile
        else (str(rng.randrange(2, 6)) + f"{rng.randrange(1000):03d}")
    )
    b = f"{rng.randrange(10000):04d}"
    forms = [
        (f"({ddd}) {a}-{b}", ""),
        (f"+55 {ddd} {a}-{b}", ""),
        (f"+55 ({ddd}) {a}-{b}", ""),
        (f"({ddd}) {a}{b}", ""),
        (f"{ddd} {a}-{b}", "Tel.: "),
        (f"{a}-{b}", "Telefone: "),
        (f"{ddd}{a}{b}", "Celular: "),
    ]
    return rng.choice(forms)


def _date(rng: random.Random) -> str:
    y = rng.randrange(1930, 2025)
    m = rng.randrange(1, 13)
    d = rng.randrange(1, 29)
    forms = [
        f"{d:02d}/{m:02d}/{y}",
        f"{d}/{m}/{y}",
        f"{d:02d}/{m:02d}/{y % 100:02d}",
        f"{y}-{m:02d}-{d:02d}",
        f"{d} de {MONTHS[m - 1]} de {y}",
        f"{'1º' if d == 1 else d} de {MONTHS[m - 1]} de {y}",
        f"{d} de {MONTH_ABBR[m - 1]}. de {y}",
        f"{MONTHS[m - 1]} de {y}",
        f"{d:02d}.{m:02d}.{y}",
        f"{d:02d}-{m:02d}-{y}",
        f"{d:02d}/{MONTH_ABBR[m - 1]}/{y}",
    ]
    return rng.choice(forms)


def _address(rng: random.Random) -> str:
    street = f"{rng.choice(STREET_TYPES)} {rng.choice(STREETS)}"
    num = rng.choice(
        (
            f", {rng.randrange(1, 4000)}",
            f", nº {rng.randrange(1, 4000)}",
            f" {rng.randrange(1, 4000)}",
        )
    )
    comp = rng.choice(
        (
            "",
            "",
            f", apto {rng.randrange(11, 190)}",
            f", casa {rng.randrange(1, 9)}",
            f", bloco B, apto {rng.randrange(11, 99)}",
        )
    )
    city, uf = rng.choice(CITIES)
    tail = rng.choice(
        (
            f" - {rng.choice(BAIRROS)}, {city} - {uf}",
            f", {rng.choice(BAIRROS)}",
            f", {city}/{uf}",
            "",
        )
    )
    return street + num + comp + tail


def _email(rng: random.Random, p: _Person) -> str:
    first = p.first.lower().translate(str.maketrans("áâãéêíóôõúç", "aaaeeiooouc"))
    last = p.last.lower().translate(str.maketrans("áâãéêíóôõúç", "aaaeeiooouc"))
    user = rng.choice(
        (
            f"{first}.{last}",
            f"{first[0]}{last}{rng.randrange(10, 99)}",
            f"{first}_{last}",
            f"{last}.{first}",
        )
    )
    return f"{user}@{rng.choice(DOMAINS)}"


def synthetic_brazilian_records(n: int = 300, seed: int = 0) -> list[LabeledDoc]:
    """``n`` Portuguese clinical records with gold PHI spans, reproducible from ``seed``."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        p = _Person(rng)
        rel = _Person(rng)
        doc = _Person(rng)
        cpf = cpf_digits(rng)
        cpf_text = format_cpf(cpf) if rng.random() < 0.75 else cpf
        cns = cns_digits(rng)
        cns_text = format_cns(cns) if rng.random() < 0.6 else cns
        rg_d = f"{rng.randrange(10, 60)}.{rng.randrange(1000):03d}.{rng.randrange(1000):03d}-{rng.choice('0123456789X')}"
        rg_text = rg_d if rng.random() < 0.7 else re.sub(r"\.", "", rg_d)
        cep = f"{rng.randrange(1000, 99999):05d}-{rng.randrange(1000):03d}"
        phone, phone_cue = _phone(rng)
        email = _email(rng, p)
        address = _address(rng)
        mrn = str(rng.randrange(100000, 9999999))
        age = rng.choice((rng.randrange(18, 90), rng.randrange(18, 90), rng.randrange(90, 104)))
        crm = str(rng.randrange(10000, 250000))
        b = _Builder()
        v: dict[str, tuple[str, str | None]] = {
            "name": (p.full, "NAME"),
            "first": (p.first, "NAME"),
            "rel": (rel.full, "NAME"),
            "doc": (doc.full, "NAME"),
            "cpf": (cpf_text, "CPF"),
            "cns": (cns_text, "CNS"),
            "rg": (rg_text, "RG"),
            "cep": (cep, "CEP"),
            "phone": (phone, "PHONE"),
            "email": (email, "EMAIL"),
            "address": (address, "ADDRESS"),
            "mrn": (mrn, "ID"),
            "age": (str(age), "AGE" if age > 89 else None),
            "d1": (_date(rng), "DATE"),
            "d2": (_date(rng), "DATE"),
            "d3": (_date(rng), "DATE"),
            "cond": (rng.choice(CONDITIONS), None),
            "crm": (crm, "ID"),
            "sex": ("feminino" if p.female else "masculino", None),
            "pcue": (phone_cue, None),
            "title": ("Sra." if p.female else "Sr.", None),
            "dtitle": ("Dra." if doc.female else "Dr.", None),
            "relkind": (rng.choice(("filha", "filho", "esposa", "irmã", "neto")), None),
        }
        header = rng.choice(
            (
                "Paciente: {name}\nSexo: {sex}  Idade: {age} anos\n",
                "Nome: {name}, {age} anos, sexo {sex}.\n",
                "IDENTIFICAÇÃO\nNome do paciente: {name}\nData de nascimento: {d1}\n",
                "{title} {name}, {age} anos, natural de Minas Gerais.\n",
                "{name}, {age} anos, procura o pronto-socorro.\n",  # no cue
            )
        )
        b.fill(header, v)
        ids = [
            "CPF: {cpf}. ",
            "CNS: {cns}. ",
            "Cartão SUS {cns}. ",
            "RG: {rg} SSP/SP. ",
            "Prontuário nº {mrn}. ",
            "Atendimento: {mrn}. ",
            "portador(a) do CPF {cpf}. ",
        ]
        rng.shuffle(ids)
        for t in ids[: rng.randrange(2, 5)]:
            b.fill(t, v)
        b.text("\n")
        contact = rng.choice(
            (
                "Endereço: {address}, CEP {cep}. {pcue}{phone}. E-mail: {email}.\n",
                "Reside na {address} (CEP {cep}). Contato: {pcue}{phone}; {email}\n",
                "{address}. CEP: {cep}. {pcue}{phone}\nE-mail {email}\n",
                "Contato de emergência: {rel} ({relkind}), {pcue}{phone}.\n",
            )
        )
        b.fill(contact, v)
        body = [
            "Admitido(a) em {d2} com quadro de {cond}.",
            "{first} refere {cond} desde {d3}.",
            "Última consulta em {d3}.",
            "Acompanhado(a) pelo(a) {relkind} {rel}.",
            "Exames de {d2} sem alterações significativas.",
            "Alta hospitalar prevista para {d3}.",
        ]
        rng.shuffle(body)
        fill = list(CLINICAL_FILLER)
        rng.shuffle(fill)
        for t in body[: rng.randrange(2, 4)] + fill[: rng.randrange(2, 5)]:
            b.fill(t + " ", v)
        b.fill(
            rng.choice(
                (
                    "\n{dtitle} {doc} - CRM-SP {crm}\n",
                    "\nMédico responsável: {doc}\n",
                    "\nAssinado por {dtitle} {doc}.\n",
                )
            ),
            v,
        )
        text = b.build()
        extra = (p.full, cpf_text, cns_text, phone, email, address)
        docs.append(LabeledDoc(f"synthetic-{seed}-{i}", text, b.spans, extra, "synthetic-pt"))
    return docs


# ------------------------------------------------------------------------------------------
# FHIR (Synthea) notes
# ------------------------------------------------------------------------------------------


def _ndjson(path: Path) -> Iterator[dict[str, object]]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def fhir_labeled_notes(fhir_dir: Path, limit: int | None = None) -> list[LabeledDoc]:
    """The notes of a Synthea bulk export with gold spans derived from the Patient resources."""
    patients: dict[str, dict[str, list[str]]] = {}
    for p in _ndjson(fhir_dir / "Patient.000.ndjson"):
        names: list[str] = []
        tokens: set[str] = set()
        for hn in p.get("name", []):  # type: ignore[union-attr]
            given = list(hn.get("given", []))
            family = hn.get("family")
            names.append(" ".join([*given, *([family] if family else [])]))
            tokens.update(given)
            if family:
                tokens.add(family)
        others: list[tuple[str, str]] = []
        for t in p.get("telecom", []):  # type: ignore[union-attr]
            others.append((t["value"], "PHONE"))
        for ident in p.get("identifier", []):  # type: ignore[union-attr]
            code = ((ident.get("type") or {}).get("coding") or [{}])[0].get("code")
            others.append((ident["value"], "SSN" if code == "SS" else "ID"))
        for a in p.get("address", []):  # type: ignore[union-attr]
            for line in a.get("line", []):
                others.append((line, "ADDRESS"))
        patients[str(p["id"])] = {
            "names": names,
            "tokens": sorted(tokens, key=len, reverse=True),
            "others": [f"{v}\t{e}" for v, e in others],
        }
    docs: list[LabeledDoc] = []
    for d in _ndjson(fhir_dir / "DocumentReference.000.ndjson"):
        ref = str(d["subject"]["reference"]).split("/")[-1]  # type: ignore[index]
        info = patients.get(ref)
        if info is None:
            continue
        for content in d.get("content", []):  # type: ignore[union-attr]
            data = content.get("attachment", {}).get("data")
            if not data:
                continue
            text = base64.b64decode(data).decode("utf-8")
            spans: list[GoldSpan] = []
            for tok in info["tokens"]:
                for m in re.finditer(rf"(?<!\w){re.escape(tok)}(?!\w)", text, re.IGNORECASE):
                    spans.append(GoldSpan(m.start(), m.end(), "NAME"))
            for m in re.finditer(r"\b\d{4}-\d{2}-\d{2}(?:T[\d:.+\-]+)?\b", text):
                spans.append(GoldSpan(m.start(), m.end(), "DATE"))
            for m in re.finditer(r"\b(\d+)(?= year-old|-year-old| years old)", text):
                if int(m.group(1)) > 89:
                    spans.append(GoldSpan(m.start(), m.end(), "AGE"))
            extra = list(info["names"])
            for pair in info["others"]:
                value, entity = pair.split("\t")
                extra.append(value)
                for m in re.finditer(re.escape(value), text):
                    spans.append(GoldSpan(m.start(), m.end(), entity))
            spans = _merge_adjacent(sorted(spans, key=lambda s: (s.start, s.end)), text)
            docs.append(LabeledDoc(str(d["id"]), text, spans, tuple(extra), "fhir-synthea"))
            if limit is not None and len(docs) >= limit:
                return docs
    return docs


def _merge_adjacent(spans: list[GoldSpan], text: str) -> list[GoldSpan]:
    """Name tokens separated by a space are one name ("Sumiko254 Larue605")."""
    out: list[GoldSpan] = []
    for s in spans:
        if (
            out
            and out[-1].entity == s.entity
            and (s.start <= out[-1].end or text[out[-1].end : s.start].strip(" \t") == "")
        ):
            out[-1] = GoldSpan(out[-1].start, max(out[-1].end, s.end), s.entity)
        else:
            out.append(s)
    return out


_MARK = re.compile(r"\[\[([A-Z]+):(.+?)\]\]")


def parse_marked_records(path: Path) -> list[LabeledDoc]:
    """Records written by hand with inline labels: ``[[NAME:Maria Souza]]``.

    Paragraphs (blank-line separated) are records; ``#`` lines are comments; an
    ``EXTRA: a | b`` line lists the identifiers a registry knows about the patient.
    """
    docs: list[LabeledDoc] = []
    blocks = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
    for i, block in enumerate(blocks):
        lines = [ln for ln in block.splitlines() if not ln.startswith("#")]
        extra: tuple[str, ...] = ()
        body = []
        for ln in lines:
            if ln.startswith("EXTRA:"):
                extra = tuple(v.strip() for v in ln[6:].split("|") if v.strip())
            else:
                body.append(ln)
        if not body:
            continue
        b = _Builder()
        marked = "\n".join(body) + "\n"
        pos = 0
        for m in _MARK.finditer(marked):
            b.text(marked[pos : m.start()])
            b.phi(m.group(2), m.group(1))
            pos = m.end()
        b.text(marked[pos:])
        docs.append(LabeledDoc(f"{path.stem}-{i}", b.build(), b.spans, extra, path.stem))
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-fixture", type=Path, help="write a JSONL sample here")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    docs = synthetic_brazilian_records(args.n, args.seed)
    if args.write_fixture:
        args.write_fixture.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.write_fixture.with_suffix(".tmp")
        tmp.write_text("".join(d.to_json() + "\n" for d in docs), encoding="utf-8")
        tmp.replace(args.write_fixture)
        print(f"wrote {len(docs)} records to {args.write_fixture}")
    else:
        for d in docs[:3]:
            print(d.text)
            print([(d.text[s.start : s.end], s.entity) for s in d.spans])
            print("---")


if __name__ == "__main__":
    main()
