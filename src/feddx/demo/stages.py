"""The stages of ``feddx demo`` (see :mod:`feddx.demo`), run in order over one run folder.

Every stage is a method of :class:`DemoRun` that writes its artefacts under
``<out>/<stage>/`` and returns its ``results.json`` entry; :func:`run_demo` records the entry
last (:meth:`~feddx.demo.runfolder.RunFolder.record`), so a stage is finished exactly when its
figures are on disk. Seeds fix the split, the initial adapter, every data order and the
federation's clients, so a resumed run ends with the figures an uninterrupted one gives.

Sizes finish in minutes on 2 CPU cores: adapters on the top 2 layers only, whose frozen inputs
are computed once and cached for every later epoch, round and personalization.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from feddx.data.candidates import CandidateList, candidate_list
from feddx.data.schema import Case
from feddx.data.split import stratified_split
from feddx.data.uci_heart import NO_CAD
from feddx.demo.options import DEPENDS_ON, STAGES, DemoOptions
from feddx.demo.runfolder import RunFolder
from feddx.errors import ConfigError, DataError
from feddx.io import atomic_write_json
from feddx.model.adapter import LoraSpec

if TYPE_CHECKING:
    from feddx.evaluate.harness import ModelMetrics
    from feddx.model.predict import Diagnoser, Prediction

# Rank 8 on the top 2 layers, for every trained stage alike, so they compare fairly.
DEMO_LORA = LoraSpec(rank=8, alpha=16.0, top_layers=2)
PREDICTIONS = "predictions.json"
# UCI Heart's grade 0 (< 50% narrowing): the literature's binary task is grade 0 vs 1-4.
UCI_NO_DISEASE = NO_CAD

StageFn = Callable[[], dict[str, Any]]


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
        self, opts: DemoOptions, console: Console, bar: Progress, folder: RunFolder
    ) -> None:
        self.opts = opts
        self.console = console
        self.bar = bar
        self.folder = folder
        self._pending_rows: list[dict[str, Any]] = []
        self._diagnoser: Diagnoser | None = None
        self._initial: dict[str, Any] | None = None
        self._load_data()

    # ------------------------------------------------------------------ shared state
    def _load_data(self) -> None:
        from feddx.data.sources import load_cases

        loaded = load_cases(self.opts.dataset, purpose="run the demo on")
        self.source = loaded.source
        self.data_path = loaded.path
        # the loader's order, as the Flower task splits it (feddx.federated.task.task_data):
        # the federation's held-out cases must be exactly this test split (checked there)
        cases = list(loaded.cases)
        self.train, test = stratified_split(cases, self.opts.test_fraction, self.opts.seed)
        self.test = test[: self.opts.limit] if self.opts.limit else test
        self.candidates: CandidateList = candidate_list(
            self.source, self.data_path, self.train + self.test, None
        )
        self.institutions = sorted({c.institution for c in self.train if c.institution})
        self.by_institution = len(self.institutions) >= 2
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
            d = load_diagnoser(loaded, lora=DEMO_LORA, seed=self.opts.seed)
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
        task = self.bar.add_task(f"   {title}", total=len(cases))

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage == "scoring":
                self.bar.update(task, completed=done)

        try:
            return evaluate_cases(
                d, cases, self.candidates, adapter=adapter, on_progress=on_progress
            )
        finally:
            self.bar.remove_task(task)

    def _write_predictions(self, stage: str, rows: list[dict[str, Any]]) -> str:
        relative = f"{stage}/{PREDICTIONS}"
        path = self.folder.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, rows, allow_nan=False)
        return relative

    def _train_config(self, epochs: int) -> Any:
        from feddx.train.config import TrainConfig

        return TrainConfig(
            lora=DEMO_LORA,
            learning_rate=self.opts.learning_rate,
            epochs=epochs,
            batch_size=8,
            seed=self.opts.seed,
        )

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False)

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
            else f"the data names no institutions: a seeded IID split into {self.opts.clients} "
            "clients stands in for hospitals, and there are no per-hospital rows"
        )
        entry = {
            "source": self.source,
            "n_cases": self.n_loaded,
            "n_train": len(self.train),
            "n_test": len(self.test),
            "candidates": list(self.candidates.names),
            "majority_class": self.majority,
            "majority_rate": sum(g == self.majority for g in test_labels) / len(test_labels),
            "partition": partition,
            "partition_note": note,
            "split": f"stratified by diagnosis, test fraction {self.opts.test_fraction}, "
            f"seed {self.opts.seed}"
            + (f", first {self.opts.limit} test cases" if self.opts.limit else ""),
        }
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
        entry["artefacts"] = [self._write_predictions("zero-shot", result.cases)]
        self._say(
            f"[bold]2. Zero-shot[/]: top-1 {entry['top1']:.3f}, macro-F1 {entry['macro_f1']:.3f}, "
            f"{result.llm.summary['latency_ms_p50']:.0f} ms per case (p50)"
        )
        return entry

    def baseline(self) -> dict[str, Any]:
        from feddx.evaluate.baseline import fit_baseline
        from feddx.evaluate.harness import case_rows, model_metrics

        fitted = fit_baseline(self.train, seed=self.opts.seed)
        preds = fitted.predict(self.test, self.candidates.names)
        metrics = model_metrics(preds, self.candidates.names, icd10=self.candidates.icd10)
        entry = _metrics_entry(metrics)
        entry["kind"] = "logistic regression over the structured findings (scikit-learn)"
        entry["artefacts"] = [self._write_predictions("baseline", case_rows(preds))]
        self._say(f"[bold]3. Logistic regression[/]: top-1 {entry['top1']:.3f}")
        return entry

    def centralized(self) -> dict[str, Any]:
        from feddx.cli.progress import RichTrainProgress
        from feddx.model.adapter import load_adapter_state
        from feddx.paths import activation_cache_root
        from feddx.train.recipe import fit, save_trained_adapter

        d = self.diagnoser()
        config = self._train_config(self.opts.epochs)
        load_adapter_state(d.model, dict(self.initial_state()))
        result = fit(
            d.model,
            d.tokenizer,
            self.train,
            config,
            progress=RichTrainProgress(self.bar),
            feature_cache_dir=activation_cache_root(),
        )
        d.model.eval()
        adapter_dir = self.folder.stage_dir("centralized") / "adapter"
        save_trained_adapter(
            d.model,
            adapter_dir,
            base_fingerprint=d.base_fingerprint,
            max_prompt_tokens=config.max_prompt_tokens,
            candidates=self.candidates,
            metadata={"data": self.source, "stage": "centralized", "seed": self.opts.seed},
        )
        d.add_adapter(adapter_dir, name="centralized")
        scored = self._score("scoring the centralized adapter", "centralized", self.test)
        entry = _metrics_entry(scored.llm)
        entry.update(
            epochs=self.opts.epochs,
            optimizer_steps=result.steps,
            train_seconds=result.seconds,
            final_loss=result.loss_history[-1] if result.loss_history else result.mean_loss,
            adapter="centralized/adapter",
            artefacts=["centralized/adapter", self._write_predictions("centralized", scored.cases)],
        )
        self._say(
            f"[bold]4. Centralized LoRA[/]: {len(self.train)} cases x {self.opts.epochs} epochs "
            f"({result.steps} steps) in {result.seconds:.0f} s; top-1 {entry['top1']:.3f}"
        )
        return entry

    def federated(self) -> dict[str, Any]:
        from feddx.federated.demo import demo_config, federated_budget, run_federated_demo
        from feddx.federated.server_app import GLOBAL_ADAPTER_DIR

        clients = len(self.institutions) if self.by_institution else self.opts.clients
        budget = federated_budget(self.opts.epochs, clients, self.opts.local_epochs)
        d = self.diagnoser()
        cfg = demo_config(
            model=self.opts.model,
            seed=self.opts.seed,
            test_fraction=self.opts.test_fraction,
            out_dir=self.folder.stage_dir("federated") / "run",
            budget=budget,
            data=_absolute_spec(self.opts.dataset),
            by_institution=self.by_institution,
            learning_rate=self.opts.learning_rate,
            max_eval_cases=min(
                x for x in (self.opts.round_eval_cases, self.opts.limit, len(self.test)) if x
            ),
        )
        from feddx.federated.task import task_data

        held_out = {c.case_id for c in task_data(cfg).validation}
        if not {c.case_id for c in self.test} <= held_out:
            raise DataError(
                f"{self.opts.dataset}: the federation's held-out split differs from the demo's "
                "test split, so clients would train on test cases; refusing to run"
            )
        task = self.bar.add_task(
            f"   {clients} SuperNodes, {budget.rounds} rounds ({self.opts.engine})", total=None
        )
        try:
            fed = run_federated_demo(cfg, "flower" if self.opts.engine == "flower" else "inprocess")
        finally:
            self.bar.remove_task(task)
        adapter_dir = fed.out_dir / GLOBAL_ADAPTER_DIR
        # Flower needs absolute paths; the record keeps the folder relocatable
        adapter_rel = os.path.relpath(adapter_dir, self.folder.root.resolve())
        d.add_adapter(adapter_dir, name="federated")
        scored = self._score("scoring the federated adapter", "federated", self.test)
        entry = _metrics_entry(scored.llm)
        full = _full_model_bytes(d)
        completed = sum(1 for r in fed.rounds if (r.get("round") or 0) >= 1)
        exchanged = fed.bytes_sent + fed.bytes_received
        entry.update(
            budget=budget.describe(),
            rounds_planned=budget.rounds,
            local_epochs=budget.local_epochs,
            clients=clients,
            learning_rate=self.opts.learning_rate,
            lr_schedule="one cosine decay over the rounds",
            rounds=fed.rounds,
            round_eval_cases=cfg.max_eval_cases,
            bytes_per_update=fed.bytes_per_update,
            bytes_sent=fed.bytes_sent,
            bytes_received=fed.bytes_received,
            full_model_bytes=full["bytes"],
            full_model_params=full["params"],
            full_model_exchange_bytes=full["bytes"] * 2 * clients * completed,
            epsilon=fed.epsilon,
            dp="none",
            train_seconds=fed.seconds,
            adapter=adapter_rel,
            artefacts=[
                adapter_rel,
                self._write_predictions("federated", scored.cases),
            ],
        )
        self._say(
            f"[bold]5. Federated LoRA[/] (Flower, {clients} SuperNodes): {budget.describe()}; "
            f"{fed.seconds:.0f} s; top-1 {entry['top1']:.3f}; {exchanged / 2**20:.1f} MiB "
            f"exchanged (the full model would be {entry['full_model_exchange_bytes'] / 2**30:.1f} GiB)"
        )
        return entry

    def personalized(self) -> dict[str, Any]:
        from feddx.evaluate.calibration import cross_fit_temperature
        from feddx.evaluate.harness import case_rows, model_metrics
        from feddx.model.adapter import read_adapter_state
        from feddx.paths import activation_cache_root
        from feddx.personalize.methods import LocalTrainer, local_finetune
        from feddx.train.recipe import save_trained_adapter

        parent_stage = "federated" if self.folder.finished("federated") else "centralized"
        parent = self.folder.entry(parent_stage)
        if parent is None or not self.folder.finished(parent_stage):
            raise ConfigError(
                "the personalized stage starts from the federated adapter: run "
                "--stages federated (or centralized) first"
            )
        if not self.by_institution:
            raise DataError(
                f"{self.opts.dataset}: the cases name no institutions, so there is nothing to "
                "personalize to (drop 'personalized' from --stages)"
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
        )
        config = self._train_config(self.opts.personal_epochs)
        regions: dict[str, list[str]] = {}
        for c in self.train:
            if c.institution:
                region = c.region or c.institution
                regions.setdefault(region, [])
                if c.institution not in regions[region]:
                    regions[region].append(c.institution)
        root = self.folder.stage_dir("personalized")
        adapters: dict[str, dict[str, Any]] = {}
        answering: dict[str, str] = {}

        def train_and_save(
            name: str, begin: Mapping[str, Any], cases: list[Case], where: Path
        ) -> Any:
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
            return state

        for region in sorted(regions):
            members = sorted(regions[region])
            region_cases = [c for c in self.train if c.institution in members]
            rdir = root / "regional" / _slug(region)
            rstate = train_and_save(region, start, region_cases, rdir)
            adapters[f"regional/{region}"] = {
                "level": "regional",
                "region": region,
                "path": str(rdir.relative_to(self.folder.root)),
                "n_train": len(region_cases),
            }
            for inst in members:
                answering[inst] = f"regional/{region}"
            if len(members) < 2:
                continue  # the region is one institution: its regional adapter is its own
            for inst in members:
                inst_cases = [c for c in region_cases if c.institution == inst]
                idir = root / "institutional" / _slug(inst)
                train_and_save(inst, rstate, inst_cases, idir)
                adapters[f"institutional/{inst}"] = {
                    "level": "institutional",
                    "region": region,
                    "institution": inst,
                    "parent": f"regional/{region}",
                    "path": str(idir.relative_to(self.folder.root)),
                    "n_train": len(inst_cases),
                }
                answering[inst] = f"institutional/{inst}"

        raw: list[Prediction] = []
        cset = d.candidate_set(self.candidates.names, self.candidates.icd10)
        for inst in sorted({c.institution for c in self.test if c.institution}):
            name = answering.get(inst)
            cases = [c for c in self.test if c.institution == inst]
            if name is None:  # a test-only institution: the parent answers
                name = parent_stage
            else:
                d.add_adapter(self.folder.root / adapters[name]["path"], name=name)
            task = self.bar.add_task(f"   scoring {inst} with {name}", total=len(cases))

            def advance(i: int, task: TaskID = task) -> None:
                self.bar.update(task, completed=i + 1)

            raw += d.diagnose(cases, cset, adapter=name, temperature=1.0, on_case=advance)
            self.bar.remove_task(task)
        # the same calibration rule as the harness gives the other stages
        preds = cross_fit_temperature(raw, folds=2)[0] if len(raw) >= 10 else raw
        metrics = model_metrics(preds, cset.names, icd10=cset.icd10)
        entry = _metrics_entry(metrics)
        has_history = any(
            c.history.encounters or c.history.prior_conditions for c in self.train + self.test
        )
        entry.update(
            parent=parent_stage,
            epochs=self.opts.personal_epochs,
            adapters=adapters,
            answering=answering,
            individual=(
                "patient histories are present: serve them with feddx serve --history-dir"
                if has_history
                else f"{self.source} cases carry no patient history: the individual level "
                "(history in the prompt, similar past cases) has nothing to use here"
            ),
            artefacts=[
                *(a["path"] for a in adapters.values()),
                self._write_predictions("personalized", case_rows(preds)),
            ],
        )
        self._say(
            f"[bold]6. Personalized[/]: {len(adapters)} adapters from the {parent_stage} one "
            f"({', '.join(adapters)}); top-1 {entry['top1']:.3f}"
        )
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
        verdict = _verdicts(self.folder, rows)
        entry = {"stages": stages, "binary": binary, "verdicts": verdict, "artefacts": []}
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
            training_round=len(glob.get("rounds", [])) or None,
            data_fingerprint=fingerprint,
            metrics={k: glob[k] for k in ("top1", "top3", "macro_f1", "ece")},
        )
        registered.append(top.adapter_id)
        personal = (
            self.folder.entry("personalized") if self.folder.finished("personalized") else None
        )
        ids: dict[str, str] = {}
        for name, a in (personal or {}).get("adapters", {}).items():
            entry = registry.register(
                self.folder.root / a["path"],
                level=a["level"],
                region=_slug(a["region"]) if a.get("region") else None,
                institution=_slug(a["institution"]) if a.get("institution") else None,
                parent_id=ids[a["parent"]] if a.get("parent") else top.adapter_id,
                data_fingerprint=fingerprint,
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
            f"--candidates {_serve_candidates(self.source)}"
        )
        self._say(f"[bold]9. Serve[/]: {len(registered)} adapters registered in {root}")
        self._say(
            f"   an API key for one hospital (printed once): {key_command}\n"
            f"   start the service with:\n\n   [bold]{command}[/]\n"
        )
        return {
            "registry": "registry",
            "adapters": registered,
            "command": command,
            "key_command": key_command,
            "artefacts": ["registry"],
        }


def _serve_candidates(source: str) -> str:
    return source if source == "uci-heart" else "uci-heart"


def _slug(name: str) -> str:
    """A folder and registry name for a region or institution ("Univ. Hospitals Zurich/Basel"
    -> ``univ.-hospitals-zurich-basel``: what :func:`~feddx.personalize.registry.normalize_scope`
    accepts)."""
    out = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return re.sub(r"-{2,}", "-", out)[:64] or "group"


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


def _verdicts(folder: RunFolder, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Plain sentences on the issue's claims, from the figures (never staged)."""
    out = []
    e = {s: folder.entry(s) for s in ("centralized", "federated", "baseline", "personalized")}
    overall = rows[0] if rows else {}
    maj = overall.get("majority_rate")
    source = (folder.entry("data") or {}).get("source")
    if e["centralized"] and e["federated"]:
        gap = (e["federated"]["top1"] - e["centralized"]["top1"]) * 100
        out.append(
            f"federated vs centralized: {gap:+.1f} points top-1 "
            + (
                "(within 3 points)"
                if abs(gap) <= 3
                else "(ahead of the centralized adapter)"
                if gap > 0
                else "(MORE than 3 points behind)"
            )
        )
    if e["federated"] and maj is not None:
        above = e["federated"]["top1"] > maj
        out.append(
            f"federated top-1 {e['federated']['top1']:.3f} is "
            + ("above" if above else "NOT above")
            + f" the majority-class rate {maj:.3f}"
        )
    best = max(
        (s for s in ("centralized", "federated", "personalized") if e[s]),
        key=lambda s: e[s]["top1"],  # type: ignore[index]
        default=None,
    )
    if best and e["baseline"]:
        diff = (e[best]["top1"] - e["baseline"]["top1"]) * 100  # type: ignore[index]
        out.append(
            f"best fine-tuned LLM ({best}) vs logistic regression: {diff:+.1f} points top-1"
            + (
                ""
                if diff >= 0
                else " - the LLM is behind: UCI Heart is 13 numeric findings, where a linear "
                "model over the raw values is strong and the LLM reads the numbers as text"
                if source == "uci-heart"
                else " - the LLM is behind"
            )
        )
    if e["personalized"] and e["federated"] and len(rows) > 1:
        parent = e["personalized"].get("parent", "federated")
        changes = [
            f"{r['hospital']} {(r['personalized'] - r[parent]) * 100:+.1f}"
            for r in rows[1:]
            if r.get("personalized") is not None and r.get(parent) is not None
        ]
        if changes:
            out.append(
                f"personalized vs {parent}, per hospital (points top-1): " + ", ".join(changes)
            )
    return out


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


def run_demo(opts: DemoOptions, console: Console) -> dict[str, Any]:
    """Run the chosen stages in order over ``opts.out_dir``, skipping finished ones unless
    ``opts.force``; returns the results object (``results.json``'s content)."""
    start = time.perf_counter()
    console.rule("[bold]feddx demo")
    folder = RunFolder(opts.out_dir)
    folder.check_config(opts.fingerprint(), force=opts.force)
    with _progress(console) as bar:
        run = DemoRun(opts, console, bar, folder)
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
    console.print(
        f"[dim]demo finished in {time.perf_counter() - start:.0f} s; results in {folder.results_path}[/]"
    )
    return folder.results
