"""Cross-lingual diagnosis, measured: does an LLM carry what it learns from English symptom
descriptions over to the same descriptions written in Brazilian Portuguese, where a
bag-of-words model cannot?

Four training conditions, each scored on the same pt-BR test cases
(:class:`feddx.data.crosslingual.CrosslingualData`) beside word and character TF-IDF logistic
regression (:mod:`feddx.evaluate.baseline`) trained on the same rows in the same run:

``english``        (a) LoRA on the English clinics' rows only
``portuguese``     (b) LoRA on the Portuguese clinic's own rows only
``federation-pt``  (c) a Flower federation (feddx's ClientApp and ServerApp, delivered
                   in-process) of the three English clinics and the Portuguese clinic, then
                   fine-tuned on the Portuguese clinic's rows, kept only where the gate
                   (:mod:`feddx.personalize.gate`) says it beats the federated adapter
``federation-en``  (d) the same federation without the Portuguese clinic

Every LoRA training takes its trainer config from one :class:`FederatedConfig`
(:meth:`CrosslingualRun.federated_config`), so centralized, federated and personalized
training are one recipe with one set of knobs. Epochs and rounds are chosen on the pt-BR
validation cases (never the test cases): the first best, as the demo chooses.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feddx.data.crosslingual import CrosslingualData
from feddx.data.schema import Case
from feddx.demo.compare import first_best
from feddx.evaluate.baseline import TextAnalyzer, fit_baseline
from feddx.evaluate.stats import Comparison, compare_correct
from feddx.io import atomic_write_text
from feddx.model.loading import DEFAULT_MODEL
from feddx.paths import ROUND_ADAPTERS_DIR

if TYPE_CHECKING:
    from feddx.federated.config import FederatedConfig
    from feddx.model.predict import Diagnoser
    from feddx.train.config import TrainConfig

CONDITIONS = ("zero-shot", "english", "portuguese", "federation-pt", "federation-en")
LINEAR = ("word", "char")


@dataclass(frozen=True)
class LlmSettings:
    """The LoRA recipe every condition shares, and the most epochs/rounds a validation choice
    may pick. Small by necessity: four trainings per model on a 2-core CPU."""

    model: str = DEFAULT_MODEL
    top_layers: int = 4
    rank: int = 8
    alpha: float = 16.0
    targets: str = "all-linear"
    learning_rate: float = 2e-3
    max_epochs: int = 2
    rounds: int = 3
    local_epochs: int = 1
    personal_epochs: int = 2
    batch_size: int = 8
    max_prompt_tokens: int = 256
    seed: int = 0


@dataclass
class ConditionResult:
    """One system's pt-BR test correctness, with how it was chosen."""

    name: str
    n_train: int
    chosen: str
    validation_top1: dict[str, float]
    correct: list[bool]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def top1(self) -> float:
        return sum(self.correct) / max(1, len(self.correct))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "top1": self.top1, "n_test": len(self.correct)}


def linear_correct(
    train: Sequence[Case], test: Sequence[Case], analyzer: TextAnalyzer
) -> list[bool]:
    """Top-1 correctness on ``test`` of TF-IDF logistic regression fitted on ``train``."""
    model = fit_baseline(train, text_analyzer=analyzer)
    labels = sorted({c.require_label().diagnosis for c in [*train, *test]})
    return [p.top == p.gold for p in model.predict(test, labels)]


def training_rows(data: CrosslingualData, condition: str) -> list[Case]:
    """The rows ``condition`` trains on (the federations: all their clinics' rows pooled)."""
    rows = {
        "english": data.english,
        "portuguese": data.pt_train,
        "federation-pt": [*data.english, *data.pt_train],
        "federation-en": data.english,
        "zero-shot": [],
    }
    return list(rows[condition])


class CrosslingualRun:
    """One model's conditions over one design; adapters and federation runs under ``work``."""

    def __init__(
        self,
        data: CrosslingualData,
        settings: LlmSettings,
        work: Path,
        say: Callable[[str], None] = print,
    ) -> None:
        self.data = data
        self.settings = settings
        self.work = work
        self.say = say
        self._diagnoser: Diagnoser | None = None
        self._initial: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the recipe
    def federated_config(
        self, out: Path, clients: int, data: str = "", eval_data: str = ""
    ) -> FederatedConfig:
        """The one config: the federation runs it, the other trainings take its trainer
        config (:meth:`train_config`)."""
        from feddx.federated.config import FederatedConfig

        s = self.settings
        return FederatedConfig(
            model=str(Path(s.model).resolve()) if Path(s.model).exists() else s.model,
            data=data or "jsonl:/dev/null",
            eval_data=eval_data,
            num_clients=clients,
            partition="attribute",
            partition_attribute="institution",
            seed=s.seed,
            num_rounds=s.rounds,
            eval_every=1,
            eval_initial=False,
            local_epochs=s.local_epochs,
            lr_schedule="rounds",
            batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            max_prompt_tokens=s.max_prompt_tokens,
            lora_rank=s.rank,
            lora_alpha=s.alpha,
            lora_targets=s.targets,
            lora_top_layers=s.top_layers,
            min_train_clients=min(2, clients),
            min_available_clients=min(2, clients),
            out_dir=str(out.resolve()),
            resume=False,
        )

    def train_config(self, epochs: int) -> TrainConfig:
        """The federation's trainer config with one cosine schedule over ``epochs``."""
        cfg = self.federated_config(self.work, 1).replace(lr_schedule="local")
        return cfg.train_config(seed=self.settings.seed).replace(epochs=epochs)

    def diagnoser(self) -> Diagnoser:
        """The base model with the recipe's LoRA layout attached from the seed."""
        if self._diagnoser is None:
            from feddx.model.adapter import adapter_state
            from feddx.train.recipe import load_diagnoser

            d = load_diagnoser(
                self.settings.model, lora=self.train_config(1).lora, seed=self.settings.seed
            )
            self._initial = {k: v.clone() for k, v in adapter_state(d.model).items()}
            self._diagnoser = d
        return self._diagnoser

    def correct(self, adapter: str | None, cases: Sequence[Case]) -> list[bool]:
        """Top-1 correctness of ``adapter`` (``None``: the base model) on ``cases``."""
        d = self.diagnoser()
        cset = d.candidate_set(self.data.candidates)
        preds = d.diagnose(cases, cset, adapter=adapter, temperature=1.0)
        return [p.top == p.gold for p in preds]

    # ------------------------------------------------------------------ conditions
    def zero_shot(self) -> ConditionResult:
        """The base model, untrained: what the prompt alone gives in Portuguese."""
        t0 = time.perf_counter()
        right = self.correct(None, self.data.pt_test)
        english = {"english_originals_top1": self.english_top1(None)}
        return ConditionResult("zero-shot", 0, "-", {}, right, time.perf_counter() - t0, english)

    def centralized(self, name: str, cases: Sequence[Case]) -> ConditionResult:
        """LoRA on ``cases`` for up to ``max_epochs`` (one schedule), the epoch chosen on the
        pt-BR validation cases, the chosen one scored on the pt-BR test cases."""
        from feddx.model.adapter import adapter_state, load_adapter_state
        from feddx.paths import activation_cache_root
        from feddx.train.recipe import fit

        d = self.diagnoser()
        config = self.train_config(self.settings.max_epochs)
        assert self._initial is not None
        load_adapter_state(d.model, dict(self._initial))
        per_epoch = math.ceil(len(cases) / config.batch_size)
        snapshots: dict[int, dict[str, Any]] = {}

        def keep(step: int, _loss: float) -> None:
            if step % per_epoch == 0:
                snapshots[step // per_epoch] = adapter_state(d.model)

        t0 = time.perf_counter()
        fit(
            d.model,
            d.tokenizer,
            cases,
            config,
            feature_cache_dir=activation_cache_root(),
            on_step=keep,
        )
        d.model.eval()
        curve: dict[int, float] = {}
        for epoch, state in sorted(snapshots.items()):
            d.add_state(f"{name}-e{epoch}", state, max_prompt_tokens=config.max_prompt_tokens)
            right = self.correct(f"{name}-e{epoch}", self.data.pt_validation)
            curve[epoch] = sum(right) / max(1, len(right))
            self.say(f"   {name}: epoch {epoch} validation top-1 {curve[epoch]:.3f}")
        chosen = first_best(curve)
        test = self.correct(f"{name}-e{chosen}", self.data.pt_test)
        return ConditionResult(
            name,
            len(cases),
            f"epoch {chosen} of {self.settings.max_epochs}",
            {str(k): v for k, v in curve.items()},
            test,
            time.perf_counter() - t0,
            {"english_originals_top1": self.english_top1(f"{name}-e{chosen}")},
        )

    def english_top1(self, adapter: str | None) -> float:
        """Top-1 of ``adapter`` on the English originals of the pt-BR test cases: the same
        patients in the language of most training rows (none of them trained on)."""
        right = self.correct(adapter, self.data.english_originals(self.data.pt_test))
        top1 = sum(right) / max(1, len(right))
        self.say(f"   {adapter}: English originals of the test cases, top-1 {top1:.3f}")
        return top1

    def federation(self, name: str, with_portuguese: bool) -> ConditionResult:
        """The Flower federation (in-process delivery of the real apps) of the English clinics
        and, ``with_portuguese``, the Portuguese clinic; each round scored on the pt-BR
        validation cases by the server, the first best round scored on the test cases. The
        chosen round's adapter is held under ``name``."""
        from feddx.federated.demo import run_federated_demo

        rows = [*self.data.english, *(self.data.pt_train if with_portuguese else [])]
        folder = self.work / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for part, cases in (("train", rows), ("validation", self.data.pt_validation)):
            atomic_write_text(
                folder / f"{part}.jsonl", "".join(c.model_dump_json() + "\n" for c in cases)
            )
        atomic_write_text(folder / "candidates.txt", "\n".join(self.data.candidates) + "\n")
        clients = len({c.institution for c in rows})
        cfg = self.federated_config(
            folder / "run",
            clients,
            data=f"jsonl:{(folder / 'train.jsonl').resolve()}",
            eval_data=f"jsonl:{(folder / 'validation.jsonl').resolve()}",
        ).replace(candidates=str((folder / "candidates.txt").resolve()))
        t0 = time.perf_counter()
        fed = run_federated_demo(cfg, "inprocess")
        curve = {int(r["round"]): float(r["top1"]) for r in fed.rounds if r.get("top1") is not None}
        for r, v in sorted(curve.items()):
            self.say(f"   {name}: round {r} validation top-1 {v:.3f}")
        chosen = first_best(curve)
        self.diagnoser().add_adapter(
            fed.out_dir / ROUND_ADAPTERS_DIR / f"round-{chosen:05d}", name=name
        )
        test = self.correct(name, self.data.pt_test)
        return ConditionResult(
            name,
            len(rows),
            f"round {chosen} of {self.settings.rounds}",
            {str(k): v for k, v in sorted(curve.items())},
            test,
            time.perf_counter() - t0,
            {
                "clients": clients,
                "bytes_exchanged": fed.bytes_sent + fed.bytes_received,
                "english_originals_top1": self.english_top1(name),
            },
        )

    def personalized(self, parent: ConditionResult) -> ConditionResult:
        """The federated adapter ``parent`` fine-tuned on the Portuguese clinic's rows; the gate
        decides on the pt-BR validation cases whether it or its parent answers the clinic."""
        from feddx.model.adapter import adapter_state, load_adapter_state
        from feddx.paths import activation_cache_root
        from feddx.personalize.gate import gate
        from feddx.personalize.methods import LocalTrainer, local_finetune

        d = self.diagnoser()
        t0 = time.perf_counter()
        d.use(parent.name)
        start = adapter_state(d.model)
        trainer = LocalTrainer(d.model, d.tokenizer, feature_cache_dir=activation_cache_root())
        config = self.train_config(self.settings.personal_epochs)
        state = local_finetune(trainer, start, self.data.pt_train, config)
        child = f"{parent.name}-personalized"
        d.add_state(child, state, max_prompt_tokens=config.max_prompt_tokens)
        load_adapter_state(d.model, dict(start))
        child_val = self.correct(child, self.data.pt_validation)
        parent_val = self.correct(parent.name, self.data.pt_validation)
        decision = gate("the Portuguese clinic", child, parent.name, child_val, parent_val)
        self.say(f"   gate: {decision.reason}")
        test = self.correct(child, self.data.pt_test) if decision.accepted else parent.correct
        return ConditionResult(
            f"{parent.name}+personalized",
            len(self.data.pt_train),
            "personalized adapter (gate passed)"
            if decision.accepted
            else "federated adapter (gate refused)",
            {
                "personalized": sum(child_val) / len(child_val),
                "federated": sum(parent_val) / len(parent_val),
            },
            test,
            parent.seconds + time.perf_counter() - t0,
            {"gate": decision.to_dict(), "personal_epochs": self.settings.personal_epochs},
        )


# ---------------------------------------------------------------------- comparing


def linear_results(
    data: CrosslingualData, conditions: Sequence[str]
) -> dict[str, dict[str, list[bool]]]:
    """Word and character TF-IDF logistic regression on each condition's training rows,
    scored on the pt-BR test cases (the federations' linear reference is the pooled rows:
    what the clinics would fit if they could share them)."""
    out: dict[str, dict[str, list[bool]]] = {}
    for cond in conditions:
        rows = training_rows(data, cond)
        if rows:
            out[cond] = {a: linear_correct(rows, data.pt_test, a) for a in LINEAR}  # type: ignore[arg-type]
    return out


def comparisons(
    llm: Mapping[str, ConditionResult],
    linear: Mapping[str, Mapping[str, list[bool]]],
    *,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each LLM system against both linear models of its condition (and the personalized
    system also against the linear models of the Portuguese clinic's own rows, the issue's
    target), as paired bootstrap intervals and McNemar tests over the same test cases."""
    rows: list[dict[str, Any]] = []
    for name, res in llm.items():
        base = name.split("+")[0]
        refs = [(base, a) for a in LINEAR if base in linear]
        if name.endswith("+personalized"):
            refs += [("portuguese", a) for a in LINEAR if "portuguese" in linear]
        if name == "zero-shot":
            refs = [("english", a) for a in LINEAR if "english" in linear]
        for cond, a in refs:
            comp: Comparison = compare_correct(res.correct, linear[cond][a], seed=seed)
            rows.append({"llm": name, "linear": f"{a} TF-IDF LR on {cond} rows", **comp.to_dict()})
    return rows


def verdict(row: Mapping[str, Any]) -> str:
    """Plain words for one comparison row: ahead or behind only where the 95% interval of the
    difference excludes zero, else no clear difference."""
    lo, hi = row["interval"]["low"], row["interval"]["high"]
    diff = 100 * row["difference"]
    if lo > 0:
        return f"LLM ahead by {diff:.1f} points"
    if hi < 0:
        return f"LLM behind by {-diff:.1f} points"
    return f"no clear difference ({diff:+.1f} points)"
