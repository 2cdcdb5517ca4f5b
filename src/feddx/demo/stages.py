"""The stages of ``feddx demo`` (see :mod:`feddx.demo`), run in order over one run folder.

Every stage is a method of :class:`DemoRun` that writes its artefacts under
``<out>/<stage>/`` and returns its ``results.json`` entry; :func:`run_demo` records the entry
last (:meth:`~feddx.demo.runfolder.RunFolder.record`), so a stage is finished exactly when its
figures are on disk. Seeds fix the split, the initial adapter, every data order and the
federation's clients, so a resumed run ends with the figures an uninterrupted one gives.

Sizes finish in minutes on 2 CPU cores: adapters on the top layers only (2 for UCI Heart, a
source's own number in its ``configs/demo-<source>.yaml``), whose frozen inputs are computed
once and cached for every later epoch, round and personalization. A stage that does not apply
to the data (:meth:`DemoRun.skip_reason`) is skipped with its reason, recorded in
``results.json``'s ``skipped`` and shown in the report.
"""

from __future__ import annotations

import math
import os
import shlex
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from feddx.data.candidates import CandidateList, candidate_list
from feddx.data.schema import Case
from feddx.data.split import stratified_split
from feddx.data.uci_heart import NO_CAD
from feddx.demo.compare import equal_work, first_best
from feddx.demo.options import DEPENDS_ON, STAGES, DemoOptions, DemoTraining
from feddx.demo.runfolder import RunFolder
from feddx.errors import ConfigError, DataError
from feddx.io import atomic_write_json, atomic_write_text
from feddx.paths import ROUND_ADAPTERS_DIR

if TYPE_CHECKING:
    from feddx.data.deid import Pseudonymizer
    from feddx.evaluate.harness import ModelMetrics
    from feddx.model.predict import Diagnoser, Prediction
    from feddx.train.trainer import TrainProgress

PREDICTIONS = "predictions.json"
EQUAL_WORK_PREDICTIONS = "predictions-equal-work.json"
CANDIDATES_FILE = "candidates.txt"
# The demo's own pseudonymization key when FEDDX_DEID_KEY is not set: one per run folder, so a
# resumed run's predictions pair up by case with the earlier stages'.
KEY_FILE = ".pseudonym-key"
# UCI Heart's grade 0 (< 50% narrowing): the literature's binary task is grade 0 vs 1-4.
UCI_NO_DISEASE = NO_CAD

StageFn = Callable[[], dict[str, Any]]
ProgressFactory = Callable[[Progress], "TrainProgress"]


def _metrics_entry(metrics: ModelMetrics) -> dict[str, Any]:
    s = metrics.summary
    return {
        "n": int(s["n"]),
        "top1": float(s["top1"]),
        "top3": float(s["top3"]),
        "macro_f1": float(s["macro_f1"]),
        "balanced_accuracy": float(s["balanced_accuracy"]),
        "ece": float(metrics.calibration["ece"]),
        "per_hospital": {
            str(k): float(v["top1"]) for k, v in metrics.groups.get("institution", {}).items()
        },
    }


class DemoRun:
    """The state the stages share: options, the run folder, the split, the base model (loaded
    on first need only, so a fully resumed run does not load it)."""

    def __init__(
        self,
        opts: DemoOptions,
        console: Console,
        bar: Progress,
        folder: RunFolder,
        train_progress: ProgressFactory | None = None,
    ) -> None:
        self.opts = opts
        self.console = console
        self.bar = bar
        self.folder = folder
        self.train_progress = train_progress
        self._pseudonymizer: Pseudonymizer | None = None
        self._pending_rows: list[dict[str, Any]] = []
        self._diagnoser: Diagnoser | None = None
        self._initial: dict[str, Any] | None = None
        self._load_data()

    # ------------------------------------------------------------------ shared state
    def _load_data(self) -> None:
        from feddx.data.sources import load_cases

        loaded = load_cases(
            self.opts.dataset,
            purpose="run the demo on",
            top_labels=self.opts.top_labels,
            max_cases=self.opts.max_cases,
            seed=self.opts.seed,
        )
        self.source = loaded.source
        self.data_path = loaded.path
        # the loader's order, as the Flower task splits it (feddx.federated.task.task_data):
        # the federation's held-out cases must be exactly this test split (checked there)
        cases = list(loaded.cases)
        self.train, test = stratified_split(cases, self.opts.test_fraction, self.opts.seed)
        self.test = test[: self.opts.limit] if self.opts.limit else test
        # every choice (budgets, the personalization gate) is made on this validation split,
        # never on the test split; the trained stages fit the rest of the training side
        self.fit, self.validation = stratified_split(
            self.train, self.opts.validation_fraction, self.opts.seed
        )
        self.candidates: CandidateList = candidate_list(
            self.source, self.data_path, self.train + self.test, None
        )
        self.institutions = sorted({c.institution for c in self.train if c.institution})
        self.small = _small_institutions(self.fit, self.institutions, self.opts.min_client_cases)
        self.by_institution = len(self.institutions) >= 2 and not self.small
        labels = Counter(c.require_label().diagnosis for c in self.train)
        self.majority = labels.most_common(1)[0][0]
        self.n_loaded = len(cases)

    def diagnoser(self) -> Diagnoser:
        """The one base model every stage scores and trains on, loaded on first use, with the
        demo's LoRA layout attached from the seed (the initial adapter of every training)."""
        if self._diagnoser is None:
            from feddx.model.adapter import adapter_state
            from feddx.train.recipe import load_diagnoser, load_model

            task = self.bar.add_task("loading the base model", total=None)
            loaded = load_model(self.opts.model)
            self.bar.remove_task(task)
            how = "from cache" if loaded.from_cache else "dequantized and cached"
            self.console.print(
                f"   model: {loaded.source.name} ({how}, {loaded.load_seconds:.1f} s, "
                f"{loaded.hardware.describe()})"
            )
            # the initial adapter is a function of the seed
            # every trained stage has this one layout, so they compare fairly
            d = load_diagnoser(loaded, lora=self.opts.train.lora(), seed=self.opts.seed)
            self._initial = {k: v.clone() for k, v in adapter_state(d.model).items()}
            self._diagnoser = d
        return self._diagnoser

    def initial_state(self) -> dict[str, Any]:
        self.diagnoser()
        assert self._initial is not None
        return self._initial

    def _score(self, title: str, adapter: str | None, cases: Sequence[Case]) -> Any:
        """Evaluate with the harness (scores, cross-fitted temperature, every metric)."""
        from feddx.evaluate.harness import evaluate_cases

        d = self.diagnoser()
        with self._tracked(title, len(cases)) as completed:

            def on_progress(stage: str, done: int, total: int) -> None:
                if stage == "scoring":
                    completed(done)

            return evaluate_cases(
                d, cases, self.candidates, adapter=adapter, on_progress=on_progress
            )

    @contextmanager
    def _tracked(self, title: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar for ``title`` on a terminal; in a log (no terminal), the CLI's timestamped
        lines through ``train_progress``, so that a scoring pass of minutes is never silent.
        Yields ``completed(done)``."""
        task = self.bar.add_task(f"   {title}", total=total)
        lines = self.train_progress(self.bar) if self.train_progress and self.bar.disable else None
        if lines is not None:
            lines.started(title, total)
        shown = 0

        def completed(done: int) -> None:
            nonlocal shown
            self.bar.update(task, completed=done)
            if lines is not None and done > shown:
                lines.advanced(done - shown)
                shown = done

        try:
            yield completed
        finally:
            self.bar.remove_task(task)
            if lines is not None:
                lines.finished()

    def _write_predictions(
        self, stage: str, rows: list[dict[str, Any]], name: str = PREDICTIONS
    ) -> str:
        """Write ``rows`` with each case id replaced by its keyed pseudonym (the data's ids can
        be FHIR Encounter ids or a hospital's record numbers) and the de-identification marker
        beside it (``NAME.deid.json``); returns the file's path in the run folder."""
        from feddx.data.deid import KEY_ENV
        from feddx.data.stage import DeidMarker, write_marker

        p = self.pseudonymizer()
        relative = f"{stage}/{name}"
        path = self.folder.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        clean = [{**r, "case_id": p.pseudonym(str(r["case_id"]), "case")} for r in rows]
        atomic_write_json(path, clean, allow_nan=False)
        marker = DeidMarker(
            deidentified=True,
            key_id=p.key_id(),
            key="configured" if os.environ.get(KEY_ENV) else "random",
        )
        write_marker(path, marker, extra={"n_cases": len(clean)})
        return relative

    def pseudonymizer(self) -> Pseudonymizer:
        """The run's keyed pseudonymizer: ``FEDDX_DEID_KEY`` when set, else a random key kept
        in the run folder (``.pseudonym-key``, owner-only) so every stage of the run, resumed
        or not, names a case the same way."""
        if self._pseudonymizer is None:
            import secrets

            from feddx.data.deid import KEY_ENV, Pseudonymizer

            key = os.environ.get(KEY_ENV)
            if not key:
                path = self.folder.root / KEY_FILE
                if not path.is_file():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(path, secrets.token_hex(32) + "\n")
                    path.chmod(0o600)
                key = path.read_text().strip()
            self._pseudonymizer = Pseudonymizer(key)
        return self._pseudonymizer

    def _correct_on(self, adapter: str | None, cases: Sequence[Case], title: str) -> list[bool]:
        """Top-1 correctness of ``adapter`` on ``cases``, in order (what budgets and the gate
        are chosen on: top-1 needs no temperature)."""
        if not cases:
            return []
        d = self.diagnoser()
        cset = d.candidate_set(self.candidates.names, self.candidates.icd10)
        with self._tracked(title, len(cases)) as completed:
            preds = d.diagnose(
                cases, cset, adapter=adapter, temperature=1.0, on_case=lambda i: completed(i + 1)
            )
        return [p.top == p.gold for p in preds]

    def _train_config(self, epochs: int) -> Any:
        from feddx.train.config import TrainConfig

        t = self.opts.train
        return TrainConfig(
            lora=t.lora(),
            learning_rate=self.opts.learning_rate,
            epochs=epochs,
            batch_size=t.batch_size,
            answer_loss=t.answer_loss,
            max_prompt_tokens=t.max_prompt_tokens,
            seed=self.opts.seed,
        )

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def _no_institutions(self) -> str:
        """Why the institutions are not the federation's clients (when they are not)."""
        if len(self.institutions) < 2:
            return (
                "the data names no institutions"
                if not self.institutions
                else f"the data names one institution ({self.institutions[0]})"
            )
        return (
            f"{len(self.small)} of the {len(self.institutions)} institutions have fewer than "
            f"{self.opts.min_client_cases} training cases, too few to train or personalize on"
        )

    def _trained(self) -> str | None:
        """The trained stage the later ones start from: federated, else centralized."""
        for stage in ("federated", "centralized"):
            if self.folder.finished(stage):
                return stage
        return None

    def skip_reason(self, stage: str) -> str | None:
        """Why ``stage`` does not apply to this run (the data, or the stages before it), or
        ``None``: a stage that does not apply is skipped with this reason, never an error
        after minutes of work."""
        if stage == "federated" and len(self.fit) < 2 * self.clients:
            return (
                f"{len(self.fit)} training cases are too few for {self.clients} clients "
                "(at least 2 each)"
            )
        if stage == "personalized" and not self.by_institution:
            return f"{self._no_institutions()}, so there is nothing to personalize to"
        if stage in ("personalized", "serve") and self._trained() is None:
            return "it needs a trained adapter, and neither centralized nor federated ran"
        if stage == "evaluation" and not any(
            self.folder.finished(s) for s in ("zero-shot", "baseline", "centralized", "federated")
        ):
            return "no stage before it scored the test split"
        if stage == "report" and not self.folder.finished("evaluation"):
            return "the evaluation stage did not run"
        return None

    # ------------------------------------------------------------------ stages
    def data(self) -> dict[str, Any]:
        def split_counts(cases: Sequence[Case]) -> dict[str, int]:
            return dict(sorted(Counter(c.institution or "(none)" for c in cases).items()))

        test_labels = [c.require_label().diagnosis for c in self.test]
        train_counts, test_counts = split_counts(self.train), split_counts(self.test)
        partition: dict[str, Any] = {
            "kind": "institution" if self.by_institution else "iid",
            "clients": len(self.institutions) if self.by_institution else self.opts.clients,
            "train": train_counts,
            "test": test_counts,
            "regions": dict(
                sorted(
                    {
                        c.institution: c.region or "(none)"
                        for c in self.train
                        if c.institution is not None
                    }.items()
                )
            ),
        }
        note = (
            f"one client per institution ({len(self.institutions)})"
            if self.by_institution
            else f"{self._no_institutions()}: a seeded IID split into {self.opts.clients} "
            "clients stands in for hospitals, and there are no per-hospital rows"
        )
        entry = {
            "source": self.source,
            "n_cases": self.n_loaded,
            "n_train": len(self.train),
            "n_test": len(self.test),
            "n_fit": len(self.fit),
            "n_validation": len(self.validation),
            "validation": dict(
                sorted(Counter(c.institution or "(none)" for c in self.validation).items())
            ),
            "candidates": list(self.candidates.names),
            "majority_class": self.majority,
            "majority_rate": sum(g == self.majority for g in test_labels) / len(test_labels),
            "partition": partition,
            "partition_note": note,
            "split": f"stratified by diagnosis, test fraction {self.opts.test_fraction}, "
            f"seed {self.opts.seed}"
            + (f", first {self.opts.limit} test cases" if self.opts.limit else "")
            + f"; validation: {self.opts.validation_fraction} of the training side (stratified, "
            "same seed), where budgets and the personalization gate are chosen",
            "candidates_file": CANDIDATES_FILE,
        }
        # the run's candidate list, for the federation and the serve command (one per line)
        atomic_write_text(
            self.folder.root / CANDIDATES_FILE, "".join(f"{n}\n" for n in self.candidates.names)
        )
        self._say(
            f"[bold]1. Data[/]: {self.n_loaded} {self.source} cases; {len(self.train)} train / "
            f"{len(self.test)} test ({entry['split']}); {note}"
        )
        if self.by_institution:
            self._say(
                "   "
                + ", ".join(f"{k} {v}+{test_counts.get(k, 0)}" for k, v in train_counts.items())
                + " (train+test)"
            )
        return entry

    def zero_shot(self) -> dict[str, Any]:
        result = self._score("zero-shot scoring", None, self.test)
        entry = _metrics_entry(result.llm)
        entry["predictions"] = self._write_predictions("zero-shot", result.cases)
        entry["artefacts"] = [entry["predictions"]]
        self._say(
            f"[bold]2. Zero-shot[/]: top-1 {entry['top1']:.3f}, macro-F1 {entry['macro_f1']:.3f}, "
            f"{result.llm.summary['latency_ms_p50']:.0f} ms per case (p50)"
        )
        return entry

    def baseline(self) -> dict[str, Any]:
        from feddx.evaluate.baseline import fit_baseline
        from feddx.evaluate.harness import case_rows, model_metrics

        fitted = fit_baseline(self.fit, seed=self.opts.seed)
        preds = fitted.predict(self.test, self.candidates.names)
        metrics = model_metrics(preds, self.candidates.names, icd10=self.candidates.icd10)
        entry = _metrics_entry(metrics)
        entry["kind"] = "logistic regression over the structured findings (scikit-learn)"
        entry["predictions"] = self._write_predictions("baseline", case_rows(preds))
        entry["artefacts"] = [entry["predictions"]]
        self._say(f"[bold]3. Logistic regression[/]: top-1 {entry['top1']:.3f}")
        return entry

    def equal_work(self) -> tuple[int, int] | None:
        """``(centralized epochs, federated rounds)`` at equal examples processed (see
        :mod:`feddx.demo.compare`), from the options alone: each stage knows which of its
        adapters to score for the comparison without the other having run."""
        from feddx.federated.demo import federated_budget

        budget = federated_budget(self.opts.epochs, self.clients, self.opts.local_epochs)
        return equal_work(self.opts.max_epochs, budget.rounds, budget.local_epochs)

    @property
    def clients(self) -> int:
        return len(self.institutions) if self.by_institution else self.opts.clients

    def _equal_work_scores(
        self, stage: str, entry: Mapping[str, Any], is_chosen: bool, title: str, adapter: str
    ) -> dict[str, Any]:
        """The test scores at the equal-work point: the stage's own when its validation-chosen
        budget is that point, else ``adapter`` scored into the equal-work predictions file."""
        if is_chosen:
            return {k: entry[k] for k in ("top1", "top3", "macro_f1", "predictions")}
        return self._scored_entry(stage, title, adapter, EQUAL_WORK_PREDICTIONS)

    def _scored_entry(
        self, stage: str, title: str, adapter: str, name: str = PREDICTIONS
    ) -> dict[str, Any]:
        """Score ``adapter`` on the test split with the harness; its metrics entry, with the
        predictions file written under ``stage``."""
        scored = self._score(title, adapter, self.test)
        entry = _metrics_entry(scored.llm)
        entry["predictions"] = self._write_predictions(stage, scored.cases, name)
        return entry

    def centralized(self) -> dict[str, Any]:
        from feddx.model.adapter import adapter_state, load_adapter_state
        from feddx.paths import activation_cache_root
        from feddx.train.recipe import fit, save_trained_adapter

        d = self.diagnoser()
        config = self._train_config(self.opts.max_epochs)
        load_adapter_state(d.model, dict(self.initial_state()))
        per_epoch = math.ceil(len(self.fit) / config.batch_size)
        snapshots: dict[int, dict[str, Any]] = {}

        def keep(step: int, _loss: float) -> None:
            if step % per_epoch == 0:
                snapshots[step // per_epoch] = adapter_state(d.model)

        progress = self.train_progress(self.bar) if self.train_progress else None
        result = fit(
            d.model,
            d.tokenizer,
            self.fit,
            config,
            progress=progress,
            feature_cache_dir=activation_cache_root(),
            on_step=keep,
            candidates=self.candidates.names,
        )
        d.model.eval()
        validation: dict[int, float] = {}
        for epoch, state in sorted(snapshots.items()):
            d.add_state(f"centralized-e{epoch}", state, max_prompt_tokens=config.max_prompt_tokens)
            right = self._correct_on(
                f"centralized-e{epoch}", self.validation, f"validating epoch {epoch}"
            )
            validation[epoch] = sum(right) / max(1, len(right))
        chosen = first_best(validation)
        pair = self.equal_work()
        saved: dict[int, str] = {}
        for epoch in sorted({chosen, *([pair[0]] if pair else [])}):
            load_adapter_state(d.model, snapshots[epoch])
            where = "centralized/adapter" if epoch == chosen else f"centralized/adapter-e{epoch}"
            save_trained_adapter(
                d.model,
                self.folder.root / where,
                base_fingerprint=d.base_fingerprint,
                max_prompt_tokens=config.max_prompt_tokens,
                candidates=self.candidates,
                metadata={"data": self.source, "stage": "centralized", "epochs": epoch},
            )
            saved[epoch] = where
        entry = self._scored_entry(
            "centralized", "scoring the centralized adapter", f"centralized-e{chosen}"
        )
        entry.update(
            epochs=chosen,
            max_epochs=self.opts.max_epochs,
            validation_top1={str(k): v for k, v in validation.items()},
            budget=f"{chosen} of {self.opts.max_epochs} epochs (one schedule), chosen on "
            f"{len(self.validation)} validation cases",
            examples_processed=chosen * len(self.fit),
            optimizer_steps=result.steps,
            train_seconds=result.seconds,
            final_loss=result.loss_history[-1] if result.loss_history else result.mean_loss,
            adapter=saved[chosen],
        )
        if pair is not None:
            equal = self._equal_work_scores(
                "centralized",
                entry,
                pair[0] == chosen,
                f"scoring centralized after {pair[0]} epochs",
                f"centralized-e{pair[0]}",
            )
            entry["equal_work"] = {**equal, "epochs": pair[0], "adapter": saved[pair[0]]}
        entry["artefacts"] = [
            *saved.values(),
            entry["predictions"],
            *([entry["equal_work"]["predictions"]] if pair and pair[0] != chosen else []),
        ]
        self._say(
            f"[bold]4. Centralized LoRA[/]: {len(self.fit)} cases, up to {self.opts.max_epochs} "
            f"epochs ({result.steps} steps) in {result.seconds:.0f} s; validation top-1 per "
            f"epoch {', '.join(f'{v:.3f}' for v in validation.values())}: {chosen} chosen; "
            f"test top-1 {entry['top1']:.3f}"
        )
        return entry

    def _federated_config(self, budget: Any, data_dir: Path) -> Any:
        """The demo federation's config: it trains on the fit split and evaluates every round on
        the validation split (both written to ``data_dir`` as JSON lines), ranking the run's
        candidate list."""
        from feddx.federated.config import FederatedConfig
        from feddx.federated.demo import demo_config

        for name, cases in (("fit", self.fit), ("validation", self.validation)):
            atomic_write_text(
                data_dir / f"{name}.jsonl", "".join(c.model_dump_json() + "\n" for c in cases)
            )
        cfg = demo_config(
            model=self.opts.model,
            seed=self.opts.seed,
            test_fraction=self.opts.test_fraction,
            out_dir=self.folder.stage_dir("federated") / "run",
            budget=budget,
            data=f"jsonl:{data_dir / 'fit.jsonl'}",
            by_institution=self.by_institution,
            learning_rate=self.opts.learning_rate,
            max_eval_cases=self.opts.round_eval_cases,
        )
        # a source's own layout (its demo config); the built-in demo keeps the federation's
        train = self.opts.train.run_config() if self.opts.train != DemoTraining() else {}
        extra = {
            **train,
            "eval-data": f"jsonl:{data_dir / 'validation.jsonl'}",
            "candidates": str((self.folder.root / CANDIDATES_FILE).resolve()),
        }
        return FederatedConfig.from_mapping({**cfg.to_run_config(), **extra}, origin="demo")

    def _check_federated_split(self, cfg: Any) -> None:
        from feddx.federated.task import task_data

        data = task_data(cfg)
        trained = {c.case_id for c in data.train}
        if trained & {c.case_id for c in [*self.test, *self.validation]} or len(trained) != len(
            self.fit
        ):
            raise DataError(
                f"{self.opts.dataset}: the federation's training cases are not the demo's fit "
                "split, so clients could train on validation or test cases; refusing to run"
            )

    def federated(self) -> dict[str, Any]:
        import shutil
        import tempfile

        from feddx.federated.checkpoint import rounds_done
        from feddx.federated.demo import federated_budget, run_federated_demo
        from feddx.progress import polling

        budget = federated_budget(self.opts.epochs, self.clients, self.opts.local_epochs)
        d = self.diagnoser()
        # the cases travel to Flower's processes as files: outside the run folder, removed after
        data_dir = Path(tempfile.mkdtemp(prefix="feddx-demo-"))
        title = "federation"  # the progress lines' name for rounds, as `feddx federate` writes
        try:
            cfg = self._federated_config(budget, data_dir)
            self._check_federated_split(cfg)
            # the rounds run in Flower's processes: their checkpoints are the progress to show
            with (
                self._tracked(title, budget.rounds) as shown,
                polling(lambda: rounds_done(cfg.out_path()), shown, budget.rounds),
            ):
                fed = run_federated_demo(
                    cfg, "flower" if self.opts.engine == "flower" else "inprocess"
                )
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        validation = {
            int(r["round"]): float(r["top1"])
            for r in fed.rounds
            if (r.get("round") or 0) >= 1 and r.get("top1") is not None
        }
        chosen = first_best(validation)
        pair = self.equal_work()
        # Flower needs absolute paths; the record keeps the folder relocatable
        where = {
            r: os.path.relpath(
                fed.out_dir / ROUND_ADAPTERS_DIR / f"round-{r:05d}", self.folder.root.resolve()
            )
            for r in {chosen, *([pair[1]] if pair else [])}
        }
        for r, rel in where.items():
            d.add_adapter(self.folder.root / rel, name=f"federated-r{r}")
        entry = self._scored_entry(
            "federated", "scoring the federated adapter", f"federated-r{chosen}"
        )
        if pair is not None:
            equal = self._equal_work_scores(
                "federated",
                entry,
                pair[1] == chosen,
                f"scoring the federation after {pair[1]} rounds",
                f"federated-r{pair[1]}",
            )
            entry["equal_work"] = {**equal, "rounds": pair[1], "adapter": where[pair[1]]}
        full = _full_model_bytes(d)
        completed = len(validation)
        exchanged = fed.bytes_sent + fed.bytes_received
        entry.update(
            budget=budget.describe(),
            rounds_planned=budget.rounds,
            rounds_chosen=chosen,
            validation_top1={str(k): v for k, v in validation.items()},
            examples_processed=chosen * budget.local_epochs * len(self.fit),
            local_epochs=budget.local_epochs,
            clients=self.clients,
            learning_rate=self.opts.learning_rate,
            lr_schedule="one cosine decay over the rounds",
            rounds=fed.rounds,
            round_eval="validation split",
            round_eval_cases=cfg.max_eval_cases or len(self.validation),
            bytes_per_update=fed.bytes_per_update,
            bytes_sent=fed.bytes_sent,
            bytes_received=fed.bytes_received,
            full_model_bytes=full["bytes"],
            full_model_params=full["params"],
            full_model_exchange_bytes=full["bytes"] * 2 * self.clients * completed,
            epsilon=fed.epsilon,
            dp="none",
            train_seconds=fed.seconds,
            adapter=where[chosen],
            artefacts=[
                os.path.relpath(fed.out_dir, self.folder.root.resolve()),
                entry["predictions"],
                *([entry["equal_work"]["predictions"]] if pair and pair[1] != chosen else []),
            ],
        )
        self._say(
            f"[bold]5. Federated LoRA[/] (Flower, {self.clients} SuperNodes): {budget.describe()}; "
            f"{fed.seconds:.0f} s; validation top-1 per round "
            f"{', '.join(f'{v:.3f}' for v in validation.values())}: round {chosen} chosen; test "
            f"top-1 {entry['top1']:.3f}; {exchanged / 2**20:.1f} MiB exchanged (the full model "
            f"would be {entry['full_model_exchange_bytes'] / 2**30:.1f} GiB)"
        )
        return entry

    def _regions(self) -> dict[str, list[str]]:
        """Region -> its institutions (a case without a region is its institution's own)."""
        regions: dict[str, list[str]] = {}
        for c in self.fit:
            if c.institution:
                members = regions.setdefault(c.region or c.institution, [])
                if c.institution not in members:
                    members.append(c.institution)
        return {r: sorted(m) for r, m in sorted(regions.items())}

    def _gate(self, name: str, parent: str, insts: Sequence[str]) -> dict[str, Any]:
        """The gate (:func:`feddx.personalize.gate.gate`) on ``name`` against ``parent`` over
        the validation cases of ``insts``."""
        from feddx.personalize.gate import gate

        cases = [c for c in self.validation if c.institution in insts]
        child = self._correct_on(name, cases, f"validating {name}")
        par = self._correct_on(parent, cases, f"validating {parent} on the same cases")
        return gate(", ".join(insts), name, parent, child, par).to_dict()

    def personalized(self) -> dict[str, Any]:
        from feddx.model.adapter import read_adapter_state
        from feddx.paths import activation_cache_root
        from feddx.personalize.gate import GATE_RULE
        from feddx.personalize.methods import LocalTrainer, local_finetune
        from feddx.train.recipe import save_trained_adapter

        parent_stage = self._trained()
        parent = self.folder.entry(parent_stage) if parent_stage else None
        if parent_stage is None or parent is None:
            raise ConfigError(
                "the personalized stage starts from the federated adapter: run "
                "--stages federated (or centralized) first"
            )
        d = self.diagnoser()
        start, _ = read_adapter_state(
            self.folder.root / parent["adapter"], base_fingerprint=d.base_fingerprint
        )
        d.add_adapter(self.folder.root / parent["adapter"], name=parent_stage)
        trainer = LocalTrainer(
            d.model,
            d.tokenizer,
            feature_cache_dir=activation_cache_root(),
            candidates=self.candidates.names,
        )
        config = self._train_config(self.opts.personal_epochs)
        root = self.folder.stage_dir("personalized")
        adapters: dict[str, dict[str, Any]] = {}
        # who answers each institution: the parent unless a personalized adapter passes the gate
        answering: dict[str, str] = {}

        def train_and_save(
            name: str, begin: Mapping[str, Any], insts: list[str], where: Path
        ) -> Any:
            cases = [c for c in self.fit if c.institution in insts]
            task = self.bar.add_task(f"   fine-tuning {name} ({len(cases)} cases)", total=None)
            try:
                state = local_finetune(trainer, begin, cases, config)
            finally:
                self.bar.remove_task(task)
            save_trained_adapter(
                d.model,
                where,
                base_fingerprint=d.base_fingerprint,
                max_prompt_tokens=config.max_prompt_tokens,
                candidates=self.candidates,
                metadata={"stage": "personalized", "scope": name, "seed": self.opts.seed},
            )
            d.add_adapter(where, name=name)
            return state

        for region, members in self._regions().items():
            rname = f"regional/{region}"
            rdir = root / "regional" / _slug(region)
            rstate = train_and_save(rname, start, members, rdir)
            rgate = self._gate(rname, parent_stage, members)
            adapters[rname] = {
                "level": "regional",
                "region": region,
                "path": str(rdir.relative_to(self.folder.root)),
                "n_train": sum(c.institution in members for c in self.fit),
                "gate": rgate,
                "registered": rgate["accepted"],
            }
            for inst in members:
                answering[inst] = rname if rgate["accepted"] else parent_stage
            if len(members) < 2:
                continue  # the region is one institution: its regional adapter is its own
            for inst in members:
                iname = f"institutional/{inst}"
                idir = root / "institutional" / _slug(inst)
                train_and_save(iname, rstate, [inst], idir)
                igate = self._gate(iname, answering[inst], [inst])
                adapters[iname] = {
                    "level": "institutional",
                    "region": region,
                    "institution": inst,
                    "parent": rname if rgate["accepted"] else None,
                    "path": str(idir.relative_to(self.folder.root)),
                    "n_train": sum(c.institution == inst for c in self.fit),
                    "gate": igate,
                    "registered": igate["accepted"],
                }
                if igate["accepted"]:
                    answering[inst] = iname
        entry = self._answered_by(answering, parent_stage)
        has_history = any(
            c.history.encounters or c.history.prior_conditions for c in self.train + self.test
        )
        entry.update(
            parent=parent_stage,
            epochs=self.opts.personal_epochs,
            gate_rule=GATE_RULE,
            adapters=adapters,
            answering=answering,
            individual=(
                "patient histories are present: serve them with feddx serve --history-dir"
                if has_history
                else f"{self.source} cases carry no patient history: the individual level "
                "(history in the prompt, similar past cases) has nothing to use here"
            ),
        )
        entry["artefacts"] = [*(a["path"] for a in adapters.values()), entry["predictions"]]
        kept = [n for n, a in adapters.items() if a["registered"]]
        self._say(
            f"[bold]6. Personalized[/]: {len(adapters)} adapters from the {parent_stage} one; "
            f"{len(kept)} passed the validation gate ({', '.join(kept) or 'none'}); "
            f"test top-1 {entry['top1']:.3f}"
        )
        for a in adapters.values():
            self._say(f"   gate: {a['gate']['reason']}")
        return entry

    def _answered_by(self, answering: Mapping[str, str], parent: str) -> dict[str, Any]:
        """The test split scored as the service would answer it: each institution by the
        adapter the gate left answering it (the parent for a test-only institution)."""
        from feddx.evaluate.calibration import cross_fit_temperature
        from feddx.evaluate.harness import case_rows, model_metrics

        d = self.diagnoser()
        cset = d.candidate_set(self.candidates.names, self.candidates.icd10)
        by_case: dict[int, Prediction] = {}
        for inst in sorted({c.institution or "" for c in self.test}):
            name = answering.get(inst, parent)
            idx = [i for i, c in enumerate(self.test) if (c.institution or "") == inst]
            title = f"scoring {inst or '(none)'} with {name}"
            with self._tracked(title, len(idx)) as completed:

                def advance(i: int, done: Callable[[int], None] = completed) -> None:
                    done(i + 1)

                preds = d.diagnose(
                    [self.test[i] for i in idx],
                    cset,
                    adapter=name,
                    temperature=1.0,
                    on_case=advance,
                )
            by_case.update(zip(idx, preds, strict=True))
        raw = [by_case[i] for i in range(len(self.test))]  # the test split's order
        # the same calibration rule as the harness gives the other stages
        preds = cross_fit_temperature(raw, folds=2)[0] if len(raw) >= 10 else raw
        entry = _metrics_entry(model_metrics(preds, cset.names, icd10=cset.icd10))
        entry["predictions"] = self._write_predictions("personalized", case_rows(preds))
        return entry

    def evaluation(self) -> dict[str, Any]:
        stages = [
            s
            for s in ("zero-shot", "baseline", "centralized", "federated", "personalized")
            if self.folder.finished(s)
        ]
        if not stages:
            raise ConfigError("the evaluation stage needs at least one scored stage before it")
        inst_of = {c.case_id: c.institution or "(none)" for c in self.test}
        rows: list[dict[str, Any]] = []
        groups = ["all", *sorted(set(inst_of.values()))] if self.by_institution else ["all"]
        for group in groups:
            cases = [c for c in self.test if group == "all" or (c.institution or "(none)") == group]
            row: dict[str, Any] = {
                "hospital": group,
                "n": len(cases),
                "majority_rate": sum(c.require_label().diagnosis == self.majority for c in cases)
                / len(cases),
            }
            for s in stages:
                entry = self.folder.entry(s) or {}
                row[s] = (
                    entry.get("top1")
                    if group == "all"
                    else entry.get("per_hospital", {}).get(group)
                )
            rows.append(row)
        binary: dict[str, Any] = {}
        if self.source == "uci-heart":
            for s in stages:
                binary[s] = _binary_accuracy(
                    self.folder.read_json(f"{s}/{PREDICTIONS}"), UCI_NO_DISEASE
                )
        said = _verdicts(self.folder, rows, self.opts.seed)
        verdict = said["lines"]
        entry = {
            "stages": stages,
            "binary": binary,
            "verdicts": verdict,
            "comparisons": said["comparisons"],
            "artefacts": [],
        }
        table = Table(title="Test split: top-1 per hospital (n = cases)")
        for col in ["hospital", "n", "majority class", *stages]:
            table.add_column(col, justify="left" if col == "hospital" else "right")
        for row in rows:
            table.add_row(
                row["hospital"],
                str(row["n"]),
                f"{row['majority_rate']:.3f}",
                *(f"{row[s]:.3f}" if row.get(s) is not None else "-" for s in stages),
            )
        if binary:
            table.add_row(
                "[dim]disease yes/no (all)[/]",
                "",
                "",
                *(f"{binary[s]['accuracy']:.3f}" for s in stages),
            )
        self.console.print(table)
        for line in verdict:
            self._say(f"   {line}")
        self._pending_rows = rows
        return entry

    def report(self) -> dict[str, Any]:
        from feddx.demo.report import REPORT_FILE, write_report

        path = write_report(self.folder.root)
        self._say(f"[bold]8. Report[/]: {path}")
        return {"path": REPORT_FILE, "artefacts": [REPORT_FILE]}

    def _serve_candidates(self) -> str:
        """The service's candidate list for this run's adapters: UCI Heart by name (a fixed
        label space), any other source by the run's own list (``candidates.txt``): the service
        refuses adapters whose recorded list differs from it."""
        if self.source == "uci-heart":
            return "uci-heart"
        return str((self.folder.root / CANDIDATES_FILE).resolve())

    def serve(self) -> dict[str, Any]:
        import shutil

        from feddx.personalize.registry import AdapterRegistry, data_fingerprint

        root = self.folder.root / "registry"
        shutil.rmtree(root, ignore_errors=True)  # rebuilt from this run's adapters alone
        registry = AdapterRegistry(root)
        fingerprint = data_fingerprint(self.train)
        glob_stage = "federated" if self.folder.finished("federated") else "centralized"
        glob = self.folder.entry(glob_stage)
        if glob is None or not self.folder.finished(glob_stage):
            raise ConfigError(
                "the serve stage needs a trained adapter: run --stages federated first"
            )
        registered = []
        top = registry.register(
            self.folder.root / glob["adapter"],
            level="global",
            training_round=glob.get("rounds_chosen"),
            data_fingerprint=fingerprint,
            metrics={k: glob[k] for k in ("top1", "top3", "macro_f1", "ece")},
        )
        registered.append(top.adapter_id)
        personal = (
            self.folder.entry("personalized") if self.folder.finished("personalized") else None
        )
        ids: dict[str, str] = {}
        refused: dict[str, str] = {}
        for name, a in (personal or {}).get("adapters", {}).items():
            if not a.get("registered"):
                # the gate kept its parent answering: not in the registry, and here is why
                refused[name] = a["gate"]["reason"]
                continue
            entry = registry.register(
                self.folder.root / a["path"],
                level=a["level"],
                region=_slug(a["region"]) if a.get("region") else None,
                institution=_slug(a["institution"]) if a.get("institution") else None,
                parent_id=ids[a["parent"]] if a.get("parent") in ids else top.adapter_id,
                data_fingerprint=fingerprint,
                metrics={
                    "validation_correct": float(a["gate"]["child_correct"]),
                    "parent_validation_correct": float(a["gate"]["parent_correct"]),
                    "validation_n": float(a["gate"]["n_validation"]),
                },
            )
            ids[name] = entry.adapter_id
            registered.append(entry.adapter_id)
        model = (
            str(Path(self.opts.model).resolve())
            if Path(self.opts.model).exists()
            else self.opts.model
        )
        keys = self.folder.root / "keys.json"
        regions = (self.folder.entry("data") or {}).get("partition", {}).get("regions", {})
        example = self.institutions[0] if self.institutions else "my-hospital"
        region = regions.get(example)
        key_command = (
            f"feddx serve keys add {_slug(example)}"
            + (f" --region {_slug(region)}" if region else "")
            + f" --keys {keys}"
        )
        command = (
            f"feddx serve --model {shlex.quote(model)} --registry {root} --keys {keys} "
            f"--candidates {shlex.quote(self._serve_candidates())}"
        )
        self._say(f"[bold]9. Serve[/]: {len(registered)} adapters registered in {root}")
        for name, why in refused.items():
            self._say(f"   not registered: {name}: {why}")
        self._say(
            f"   an API key for one hospital (printed once): {key_command}\n"
            f"   start the service with:\n\n   [bold]{command}[/]\n"
        )
        return {
            "registry": "registry",
            "adapters": registered,
            "not_registered": refused,
            "command": command,
            "key_command": key_command,
            "artefacts": ["registry"],
        }


def _small_institutions(
    fit: Sequence[Case], institutions: Sequence[str], min_cases: int
) -> list[str]:
    """The institutions with fewer than ``min_cases`` cases in ``fit``: one client or one
    personalized adapter each would learn from a handful of cases (the eICU demo's 179
    hospitals hold at most 17 stays each)."""
    counts = Counter(c.institution for c in fit)
    return [i for i in institutions if counts[i] < min_cases]


def _slug(name: str) -> str:
    """A folder and registry name for a region or institution: its one slug
    (:func:`feddx.data.slug.slug`, as deploy, personalize, the registry and the service name
    it: "Univ. Hospitals Zurich/Basel" -> ``univ-hospitals-zurich-basel``)."""
    from feddx.data.slug import slug

    return slug(name) or "group"


def _absolute_spec(spec: str) -> str:
    """``SOURCE:PATH`` with an absolute path: Flower's processes run elsewhere."""
    source, sep, path = spec.partition(":")
    return f"{source}:{Path(path).resolve()}" if sep and path else spec


def _full_model_bytes(d: Diagnoser) -> dict[str, int]:
    """The base model's float32 size, a tied embedding counted once (134.5M parameters for
    SmolLM2-135M): what one client would send per round without adapters."""
    base = d.model.get_base_model() if hasattr(d.model, "get_base_model") else d.model
    seen: set[int] = set()
    params = 0
    for k, v in base.state_dict().items():
        if "lora_" in k or v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        params += v.numel()
    return {"params": params, "bytes": params * 4}


def _binary_accuracy(rows: Sequence[Mapping[str, Any]], negative: str) -> dict[str, float]:
    """Disease yes/no from the 5-way predictions: P(disease) is the sum of the probabilities of
    every grade but ``negative``; predicted positive above 0.5."""
    right = tp = fp = fn = 0
    for row in rows:
        p = sum(c["probability"] or 0.0 for c in row["ranked"] if c["name"] != negative)
        gold = row["gold"] != negative
        pred = p > 0.5
        right += pred == gold
        tp += pred and gold
        fp += pred and not gold
        fn += gold and not pred
    n = len(rows)
    return {
        "n": n,
        "accuracy": right / n if n else 0.0,
        "sensitivity": tp / (tp + fn) if tp + fn else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
    }


def _compare(folder: RunFolder, a: str, b: str, seed: int) -> Any:
    """The paired comparison (:func:`feddx.evaluate.stats.compare_predictions`) of two
    predictions files of the run (A - B)."""
    from feddx.evaluate.stats import compare_predictions

    return compare_predictions(folder.read_json(a), folder.read_json(b), seed=seed)


def _verdicts(folder: RunFolder, rows: Sequence[Mapping[str, Any]], seed: int) -> dict[str, Any]:
    """Plain sentences on the issue's claims, from the figures (never staged), and the paired
    comparisons behind them (intervals and p-values from :mod:`feddx.evaluate.stats`)."""
    from feddx.demo.compare import equal_work_verdict, own_budget_verdict

    lines: list[str] = []
    comparisons: dict[str, Any] = {}
    e = {s: folder.entry(s) for s in ("centralized", "federated", "baseline", "personalized")}
    overall = rows[0] if rows else {}
    maj = overall.get("majority_rate")
    source = (folder.entry("data") or {}).get("source")
    cen, fed = e["centralized"], e["federated"]
    if cen and fed and cen.get("equal_work") and fed.get("equal_work"):
        ce, fe = cen["equal_work"], fed["equal_work"]
        c = _compare(folder, fe["predictions"], ce["predictions"], seed)
        comparisons["equal_work"] = c.to_dict()
        lines.append(equal_work_verdict(c, ce["epochs"], fe["rounds"]))
    if cen and fed:
        c = _compare(folder, fed["predictions"], cen["predictions"], seed)
        comparisons["own_budgets"] = c.to_dict()
        fed_work = fed["rounds_chosen"] * fed["local_epochs"]
        lines.append(
            own_budget_verdict(c, fed["rounds_chosen"], fed_work, cen["epochs"], cen["epochs"])
        )
    zero = folder.entry("zero-shot")
    for stage in ("centralized", "federated"):
        trained = e[stage]
        if trained and zero:
            c = _compare(folder, trained["predictions"], zero["predictions"], seed)
            comparisons[f"{stage}_vs_zero_shot"] = c.to_dict()
            beats = "beats" if c.interval.low > 0 else "does NOT clearly beat"
            lines.append(f"{stage} LoRA {beats} zero-shot: {c.describe()}")
    if fed and maj is not None:
        above = fed["top1"] > maj
        lines.append(
            f"federated top-1 {fed['top1']:.3f} is "
            + ("above" if above else "NOT above")
            + f" the majority-class rate {maj:.3f}"
        )
    best = max(
        (s for s in ("centralized", "federated", "personalized") if e[s]),
        key=lambda s: e[s]["top1"],  # type: ignore[index]
        default=None,
    )
    best_entry = e[best] if best else None
    if best_entry and e["baseline"]:
        c = _compare(folder, best_entry["predictions"], e["baseline"]["predictions"], seed)
        comparisons["best_llm_vs_baseline"] = {**c.to_dict(), "llm": best}
        behind = c.interval.high < 0
        lines.append(
            f"best fine-tuned LLM ({best}) vs logistic regression: {c.describe()}"
            + (
                ""
                if not behind
                else " - the LLM is behind: UCI Heart is 13 numeric findings, where a linear "
                "model over the raw values is strong and the LLM reads the numbers as text"
                if source == "uci-heart"
                else f" - the LLM is behind: {_sized_for_minutes(folder)}"
            )
        )
    if e["personalized"] and len(rows) > 1:
        parent = e["personalized"].get("parent", "federated")
        c = _compare(folder, e["personalized"]["predictions"], e[parent]["predictions"], seed)  # type: ignore[index]
        comparisons["personalized_vs_parent"] = c.to_dict()
        changes = [
            f"{r['hospital']} {(r['personalized'] - r[parent]) * 100:+.1f}"
            for r in rows[1:]
            if r.get("personalized") is not None and r.get(parent) is not None
        ]
        lines.append(
            f"personalized (gated on validation) vs {parent}: {c.describe()}; per hospital "
            "(points top-1, test split): " + ", ".join(changes)
        )
    return {"lines": lines, "comparisons": comparisons}


def _sized_for_minutes(folder: RunFolder) -> str:
    """Why a fine-tuned demo LLM may trail the linear model: the demo's training is sized to
    finish in minutes, not for the best accuracy."""
    cfg = folder.results.get("config") or {}
    train = DemoTraining.from_mapping(cfg.get("train") or {}, origin="results.json")
    layers = f"the top {train.lora_top_layers} layers" if train.lora_top_layers else "every layer"
    return (
        f"the demo trains rank-{train.lora_rank} adapters on {layers} for at most "
        f"{cfg.get('max_epochs')} epochs so that it finishes in minutes; feddx train with a "
        "deeper config (configs/train-*.yaml, results/training.md) is what closes the gap"
    )


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def run_demo(
    opts: DemoOptions, console: Console, train_progress: ProgressFactory | None = None
) -> dict[str, Any]:
    """Run the chosen stages in order over ``opts.out_dir``, skipping finished ones unless
    ``opts.force``; returns the results object (``results.json``'s content).
    ``train_progress`` makes the training loop's progress display on the demo's bar (the CLI
    passes its rich one; the demo draws none of its own, so it needs nothing of the CLI)."""
    start = time.perf_counter()
    console.rule("[bold]feddx demo")
    folder = RunFolder(opts.out_dir)
    folder.check_config(opts.fingerprint(), force=opts.force)
    with _progress(console) as bar:
        run = DemoRun(opts, console, bar, folder, train_progress)
        steps: dict[str, StageFn] = {
            "data": run.data,
            "zero-shot": run.zero_shot,
            "baseline": run.baseline,
            "centralized": run.centralized,
            "federated": run.federated,
            "personalized": run.personalized,
            "evaluation": run.evaluation,
            "report": run.report,
            "serve": run.serve,
        }
        chosen = [s for s in STAGES if s in opts.stages]
        overall = bar.add_task("[bold]stages", total=len(chosen))
        ran: set[str] = set()
        current = None
        try:
            for name in chosen:
                current = name
                stale = bool(DEPENDS_ON.get(name, frozenset()) & ran)
                done = folder.finished(name) and not opts.force and not stale
                if done and name == "data":
                    run.data()  # cheap, and it says what the run is about
                    bar.advance(overall)
                    continue
                if done:
                    console.print(f"[dim]{name}: finished earlier, skipped (--force reruns it)[/]")
                    bar.advance(overall)
                    continue
                why = run.skip_reason(name)
                folder.skip(name, why)
                if why is not None:
                    console.print(f"[yellow]{name}: skipped[/]: {why}", highlight=False)
                    bar.advance(overall)
                    continue
                bar.update(
                    overall,
                    description=f"[bold]stage {chosen.index(name) + 1}/{len(chosen)}: {name}",
                )
                folder.forget(name)
                t0 = time.perf_counter()
                entry = steps[name]()
                entry["seconds"] = round(time.perf_counter() - t0, 2)
                top: dict[str, Any] = {}
                if name == "evaluation":
                    top["per_hospital"] = run._pending_rows
                folder.record(name, entry, **top)
                ran.add(name)
                bar.advance(overall)
        except KeyboardInterrupt:
            console.print(
                f"[yellow]interrupted during stage '{current}'[/]: the finished stages are kept "
                f"in {folder.results_path}; run the same command again to resume",
                highlight=False,
            )
            raise
    if folder.finished("report"):
        # rebuilt from the final record, exactly as `feddx report RUN_DIR` builds it, so the
        # page includes the stages recorded after it (serve, its own time)
        from feddx.demo.report import write_report

        write_report(folder.root)
    console.print(
        f"[dim]demo finished in {time.perf_counter() - start:.0f} s; results in {folder.results_path}[/]"
    )
    return folder.results
