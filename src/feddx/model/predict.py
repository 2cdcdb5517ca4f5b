"""The one inference object: a base model loaded once, adapter states held and swapped, and a
batch of cases scored into ranked differentials.

:class:`Diagnoser` is what ``feddx evaluate``, the federated server's evaluation, the demo, the
personalization evaluator and the service call; nothing else renders prompts and scores
candidates for a model. It owns three decisions that must not differ between those callers:

- **which weights**: the base model alone (zero-shot), one adapter, or an ensemble of adapters
  of one LoRA layout; adapters are checked (fingerprint, checksum, layout, finite values) once
  when they are added, so swapping between them per request copies tensors and nothing else;
- **which prompt budget**: the one the adapter was trained with (:class:`~feddx.model.adapter.
  AdapterInfo`), so an adapter is never scored on prompts truncated differently;
- **which temperature**: the one fitted for the adapter and recorded beside it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from feddx.data.schema import Case
from feddx.errors import ModelError
from feddx.model.adapter import (
    AdapterInfo,
    AdapterState,
    LoraSpec,
    adapter_state,
    attach_lora,
    load_adapter_state,
    lora_spec_of,
    read_adapter_info,
    read_adapter_state,
    validate_state,
)
from feddx.model.hardware import CPU_FLOAT32, Hardware
from feddx.model.prompt import DEFAULT_MAX_PROMPT_TOKENS, PromptContext, render_prompt

if TYPE_CHECKING:
    from feddx.model.loading import LoadedModel

from feddx.model.scoring import (
    DEFAULT_METHOD,
    CandidateSet,
    PrefixKV,
    ScoredCandidate,
    ScoringMethod,
    batch_candidate_scores,
    candidate_scores,
    prepare_candidates,
    probabilities,
    rank_scores,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The ranked differential the model gave for one case, and how long it took.

    ``ranked`` holds every candidate, most probable first, with its raw score, so the
    probabilities can be recomputed at another temperature without running the model again
    (:func:`with_temperature`).
    """

    case: Case
    ranked: list[ScoredCandidate]
    latency_ms: float

    @property
    def top(self) -> str:
        return self.ranked[0].name

    @property
    def gold(self) -> str:
        """The reference diagnosis (:class:`ValueError` naming the case if unlabeled)."""
        return self.case.require_label().diagnosis

    def probability_of(self, name: str) -> float:
        """The predicted probability of ``name`` (0 if it is not a candidate)."""
        return next((r.probability for r in self.ranked if r.name == name), 0.0)


def check_labels(cases: Sequence[Case], candidates: Sequence[str], what: str = "cases") -> None:
    """Raise :class:`ValueError` unless every case is labeled with one of ``candidates``.

    The message names each offending label (a diagnosis name, never patient text) with its
    count and one example case id, so the user can fix the candidate list or the data.
    """
    if not cases:
        raise ValueError(f"no {what} to evaluate")
    unlabeled = [c.case_id for c in cases if c.label is None]
    if unlabeled:
        raise ValueError(
            f"{len(unlabeled)} of the {what} have no label (first: case {unlabeled[0]!r})"
        )
    known = set(candidates)
    outside = Counter(
        c.require_label().diagnosis for c in cases if c.label and c.label.diagnosis not in known
    )
    if outside:
        first = {
            name: next(c.case_id for c in cases if c.label and c.label.diagnosis == name)
            for name in outside
        }
        listed = "; ".join(
            f"{name!r} ({n} case{'s' if n > 1 else ''}, e.g. {first[name]!r})"
            for name, n in outside.most_common(5)
        )
        more = f" and {len(outside) - 5} more" if len(outside) > 5 else ""
        raise ValueError(
            f"label outside the candidate list ({len(known)} candidates) in {what}: {listed}{more}"
        )


@dataclass(frozen=True)
class HeldAdapter:
    """An adapter state a :class:`Diagnoser` holds, checked once when it was added.

    ``info`` is the adapter's on-disk record, ``None`` for a state added from memory (a
    federated round's global adapter); ``max_prompt_tokens`` and ``temperature`` are what it is
    scored with.
    """

    name: str
    state: AdapterState
    max_prompt_tokens: int
    temperature: float
    info: AdapterInfo | None = None


AdapterChoice = str | Sequence[str] | None
"""``None``: the base model alone; a name: one held adapter; several names: their ensemble."""

_CANDIDATE_CACHE = 16
# int8 weights with one scale per output channel (torch's default for dynamic quantization is
# one per tensor, which costs more accuracy at about the same speed).
INT8_PER_CHANNEL = True
# Which linear layers run in int8: the MLP's input projections (about half of SmolLM2's linear
# work). With every linear layer in int8, SmolLM2-135M with a Symptom2Disease adapter kept its
# float32 top-1 answer on 72% of 160 development cases; with the down projections float, on
# 88% of 72; with only these, on 97% of 72 (runs on the project machine, 2026-12-07).
INT8_LAYERS: tuple[str, ...] = ("gate_proj", "up_proj", "gate_up_proj")


def float32_head(model: Any) -> bool:
    """Give a bfloat16 or float16 model on the CPU a float32 copy of its LM head (the vocabulary
    projection), so the logits every score is made of are not rounded to 8 bits of mantissa;
    ``True`` if it did. The head runs only on the few rows scoring reads (the prompt's last
    position and the candidate trie's nodes), so this costs memory (a float32 copy of the
    vocabulary matrix: 113 MB for SmolLM2) and no measurable time; on SmolLM2-135M with a
    Symptom2Disease adapter it cut the mean score difference from float32 by about a third
    (46 development cases). Should the weights be re-tied, the head runs in their dtype."""
    from feddx.model.adapter import unwrap_peft

    base = unwrap_peft(model)
    head = base.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if (
        type(head) is not torch.nn.Linear
        or weight is None
        or weight.device.type != "cpu"
        or weight.dtype not in (torch.bfloat16, torch.float16)
    ):
        return False
    base.set_output_embeddings(Float32Head(head))
    return True


class Float32Head(torch.nn.Linear):  # type: ignore[misc]  # torch.nn is Any to mypy here
    """A copy of ``head`` in float32 that casts its input to its weights' dtype (see
    :func:`float32_head`)."""

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__(head.in_features, head.out_features, bias=head.bias is not None)
        with torch.no_grad():
            self.weight.copy_(head.weight.float())
            if head.bias is not None:
                self.bias.copy_(head.bias.float())
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.to(self.weight.dtype), self.weight, self.bias)


class Diagnoser:
    """A base model with its tokenizer, the adapter states it holds, and the scorer.

    Parameters
    ----------
    model, tokenizer
        The base causal LM and its tokenizer (:class:`~feddx.model.loading.LoadedModel`'s
        fields). A model that already carries LoRA adapters is accepted: its current LoRA
        weights are held as the adapter ``"current"``.
    base_fingerprint
        Identifies the base weights; adapters trained for another base are refused.
    model_name
        For provenance only (reports, the service's ``/v1/models``).
    lora
        Attach empty LoRA adapters of this layout now (otherwise the first adapter added
        decides the layout). One diagnoser holds adapters of one layout.

    Attributes
    ----------
    prefix_cache
        Off by default. On (the service turns it on), :meth:`diagnose` keeps, per adapter and
        prompt language, the keys and values of the prompt preamble every case shares (chat
        template and system prompt) and starts each case's pass after it: exact, and less work
        per case. Only for weights changed through this object (:meth:`add_adapter`,
        :meth:`add_state`, :meth:`quantize_int8` drop the cache); whoever trains
        :attr:`model` in place must leave it off.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        base_fingerprint: str,
        model_name: str = "",
        lora: LoraSpec | None = None,
        current_max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    ) -> None:
        self.tokenizer = tokenizer
        self.base_fingerprint = base_fingerprint
        self.model_name = model_name
        self._net = model
        self._lora: LoraSpec | None = None
        self._adapters: dict[str, HeldAdapter] = {}
        self._active: str | None = None
        self._candidates: OrderedDict[tuple[Any, ...], CandidateSet] = OrderedDict()
        self.prefix_cache = False
        self.int8 = False
        self._int8_done = False
        self._float_modules: dict[str, Any] = {}
        self._prefixes: dict[tuple[str | None, str | None], PrefixKV | None] = {}
        self._preambles: dict[str | None, list[int]] = {}
        float32_head(model)  # a bf16/fp16 model on the CPU: logits in float32
        if hasattr(model, "peft_config"):
            self._lora = lora_spec_of(model)
            self.add_state(
                "current", adapter_state(model), max_prompt_tokens=current_max_prompt_tokens
            )
            self._active = "current"
        elif lora is not None:
            self.attach(lora)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls, model: str, adapters: Sequence[Path] = (), *, hardware: Hardware = CPU_FLOAT32
    ) -> Diagnoser:
        """Load base model ``model`` (alias, .gguf, directory or hub id) on ``hardware`` and
        the adapters in ``adapters`` (each held under its directory's path, see
        :meth:`add_adapter`).

        The adapters' own records are read before the base model loads, so a missing or
        corrupt adapter, or adapters of different LoRA layouts, fail in a second. Raises
        :class:`ModelError` naming the adapter.
        """
        from feddx.model.loading import load_base_model

        infos = [read_adapter_info(a) for a in adapters]
        for info in infos[1:]:
            if info.lora.layout() != infos[0].lora.layout():
                raise ModelError(
                    f"adapters of one diagnoser must share their LoRA layout: "
                    f"{infos[0].directory} has {infos[0].lora}, {info.directory} has {info.lora}"
                )
        diagnoser = cls.from_loaded(load_base_model(model, hardware))
        for info in infos:
            diagnoser.add_adapter(info.directory)
        return diagnoser

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> Diagnoser:
        """A diagnoser over an already loaded base model (no adapter held yet)."""
        return cls(
            loaded.model,
            loaded.tokenizer,
            base_fingerprint=loaded.fingerprint,
            model_name=loaded.source.name,
        )

    def attach(self, spec: LoraSpec) -> None:
        """Attach fresh LoRA adapters of layout ``spec`` (initialised from torch's global RNG:
        seed it first), e.g. to train one in place on :attr:`model`. Raises
        :class:`ModelError` if a layout is already attached."""
        if self._lora is not None:
            raise ModelError(f"LoRA layout {self._lora} is already attached")
        if self._int8_done:
            raise ModelError(
                "the base model already runs in int8 without LoRA layers: ask for int8 "
                "before scoring with the base model alone, or load an adapter first"
            )
        self._net = attach_lora(self._net, spec)  # keeps the model's train/eval mode
        self._prefixes.clear()
        self._lora = lora_spec_of(self._net)  # as attached: "auto" resolved to module names
        if self.int8:
            self._apply_int8()

    # ------------------------------------------------------------------ adapters
    @property
    def model(self) -> Any:
        """The network: the base model, LoRA-wrapped once an adapter layout is attached. Its
        LoRA weights are those of the adapter last used (:meth:`use`)."""
        return self._net

    @property
    def lora(self) -> LoraSpec | None:
        """The LoRA layout of the held adapters (``None`` before the first)."""
        return self._lora

    @property
    def adapters(self) -> dict[str, HeldAdapter]:
        """The held adapters by name (a copy)."""
        return dict(self._adapters)

    def add_adapter(self, directory: Path, *, name: str | None = None) -> HeldAdapter:
        """Read, check and hold the adapter saved in ``directory`` (or ``directory/adapter``)
        under ``name`` (default: the directory's path). Re-adding a name replaces it.

        Raises :class:`ModelError` naming the directory if it is missing or corrupt, was
        trained for another base model, or has another LoRA layout than the held adapters.
        """
        state, info = read_adapter_state(directory, base_fingerprint=self.base_fingerprint)
        if self._lora is None:
            self.attach(info.lora)
        elif info.lora.layout() != self._lora.layout():
            raise ModelError(
                f"adapter {info.directory} has LoRA layout {info.lora}; this diagnoser holds "
                f"{self._lora}"
            )
        return self._hold(
            name or str(info.directory), state, info.max_prompt_tokens, info.temperature, info
        )

    def add_state(
        self,
        name: str,
        state: Mapping[str, Any],
        *,
        max_prompt_tokens: int,
        temperature: float = 1.0,
    ) -> HeldAdapter:
        """Check and hold an in-memory LoRA state (tensors or arrays by peft key) of the
        attached layout. Raises :class:`ModelError` if it does not fit."""
        if self._lora is None:
            raise ModelError(
                "no LoRA layout attached: pass lora= or add an adapter directory first"
            )

        tensors = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in state.items()}
        return self._hold(name, tensors, max_prompt_tokens, temperature, None)

    def _hold(
        self,
        name: str,
        state: AdapterState,
        budget: int,
        temperature: float,
        info: AdapterInfo | None,
    ) -> HeldAdapter:
        validate_state(self._net, state)
        probabilities([0.0], temperature)  # a bad temperature fails here, not per request
        held = HeldAdapter(name, state, int(budget), float(temperature), info)
        self._adapters[name] = held
        self._drop_prefixes(name)
        if self._active == name:
            self._active = None  # its tensors changed: the next use() copies them in
        return held

    def remove_adapter(self, name: str) -> None:
        """Stop holding ``name`` (a no-op if it is not held)."""
        self._adapters.pop(name, None)
        self._drop_prefixes(name)
        if self._active == name:
            self._active = None

    def held(self, name: str) -> HeldAdapter:
        """The held adapter ``name``; :class:`ModelError` if there is none."""
        try:
            return self._adapters[name]
        except KeyError:
            raise ModelError(f"no adapter {name!r} is loaded") from None

    def use(self, name: str) -> HeldAdapter:
        """Make ``name`` the network's LoRA weights (a tensor copy; no re-validation)."""
        held = self.held(name)
        if self._active != name:
            load_adapter_state(self._net, held.state, validated=True)
            self._active = name
        return held

    # ------------------------------------------------------------------ scoring
    def candidate_set(
        self, candidates: Sequence[str] | CandidateSet, icd10: Mapping[str, str] | None = None
    ) -> CandidateSet:
        """``candidates`` tokenised and laid out as a trie, cached for the last few lists (a
        service scores the same list for every request). Raises :class:`ValueError` for an
        empty, blank or duplicated list."""
        if isinstance(candidates, CandidateSet):
            return replace(candidates, icd10={**candidates.icd10, **icd10}) if icd10 else candidates
        key = (tuple(candidates), tuple(sorted((icd10 or {}).items())))
        cset = self._candidates.get(key)
        if cset is None:
            cset = prepare_candidates(self.tokenizer, candidates, icd10)
            self._candidates[key] = cset
            while len(self._candidates) > _CANDIDATE_CACHE:
                self._candidates.popitem(last=False)
        else:
            self._candidates.move_to_end(key)
        return cset

    def settings(
        self, adapter: AdapterChoice, max_prompt_tokens: int | None = None
    ) -> tuple[list[HeldAdapter], int, float]:
        """The members, prompt budget and temperature :meth:`diagnose` would use for
        ``adapter``: the adapter's own budget and temperature; an ensemble's members must
        share a budget and are scored at temperature 1 (their mixture was never fitted);
        the base model alone uses the default budget. An explicit ``max_prompt_tokens``
        overrides the budget. Raises :class:`ModelError` for an unknown name or an ensemble
        whose budgets differ."""
        names = [] if adapter is None else [adapter] if isinstance(adapter, str) else list(adapter)
        members = [self.held(n) for n in names]
        budgets = sorted({m.max_prompt_tokens for m in members})
        if len(budgets) > 1:
            raise ModelError(
                "adapters of one ensemble must share their prompt budget (max_prompt_tokens); "
                f"got {budgets}"
            )
        budget = max_prompt_tokens or (budgets[0] if budgets else DEFAULT_MAX_PROMPT_TOKENS)
        temperature = members[0].temperature if len(members) == 1 else 1.0
        return members, budget, temperature

    def diagnose(
        self,
        cases: Sequence[Case],
        candidates: Sequence[str] | CandidateSet,
        *,
        adapter: AdapterChoice = None,
        icd10: Mapping[str, str] | None = None,
        method: ScoringMethod = DEFAULT_METHOD,
        temperature: float | None = None,
        max_prompt_tokens: int | None = None,
        require_labels: bool = False,
        on_case: Callable[[int], None] | None = None,
        context: Callable[[Case], PromptContext] | None = None,
        batch_size: int = 1,
    ) -> list[Prediction]:
        """Score a batch of cases into ranked differentials, in input order.

        ``adapter``: see :data:`AdapterChoice`; the budget and temperature follow it
        (:meth:`settings`) unless ``max_prompt_tokens`` or ``temperature`` are given (the
        evaluator passes ``temperature=1.0`` to calibrate the raw scores itself). An
        ensemble's candidates are ranked by the members' mean probability, the frozen layers
        below the adapters running once per case (:class:`~feddx.model.ensemble.EnsembleScorer`);
        a case's latency covers every member. With ``require_labels`` every case must carry a
        label from the candidate list (:func:`check_labels`). ``on_case(i)`` reports progress.
        ``context(case)`` (optional) gives the case's individual context: history lines in a
        chosen order and few-shot examples (:mod:`feddx.personalize`), rendered within the
        same budget; without it every prompt is the plain one the adapters were trained on.

        ``batch_size`` above 1 (one adapter or the base model) scores up to that many cases in
        one padded forward pass with one candidate trie
        (:func:`~feddx.model.scoring.batch_candidate_scores`; the same scores up to float
        rounding); each case's ``latency_ms`` is then its share of its batch's time. With
        :attr:`prefix_cache` on, the shared preamble is reused (also at ``batch_size`` 1).

        Raises :class:`ValueError` for bad candidates, labels or temperature and
        :class:`ModelError` for an unknown adapter.
        """

        cset = self.candidate_set(candidates, icd10)
        if require_labels:
            check_labels(cases, cset.names)
        members, budget, fitted = self.settings(adapter, max_prompt_tokens)
        temperature = fitted if temperature is None else temperature
        probabilities([0.0], temperature)  # fail on a bad temperature before any model work
        if self.int8:
            self._apply_int8()
        if len(members) <= 1 and (batch_size > 1 or self.prefix_cache):
            if members:
                self.use(members[0].name)
            with torch.inference_mode(), self._base_only(not members):
                return self._diagnose_batched(
                    cases,
                    cset,
                    members[0].name if members else None,
                    method=method,
                    budget=budget,
                    temperature=temperature,
                    batch_size=max(1, batch_size),
                    on_case=on_case,
                    context=context,
                )
        score: Callable[[Sequence[int]], list[float]]
        if len(members) > 1:
            from feddx.model.ensemble import EnsembleScorer

            ensemble = EnsembleScorer(self._net, [m.state for m in members], validated=True)
            self._active = None  # the scorer swaps states in and out
            score = lambda ids: ensemble.scores(ids, cset, method)  # noqa: E731
        else:
            if members:
                self.use(members[0].name)
            score = lambda ids: candidate_scores(self._net, ids, cset, method=method)  # noqa: E731
        out: list[Prediction] = []
        with torch.inference_mode(), self._base_only(not members):
            for i, case in enumerate(cases):
                start = time.perf_counter()
                extra = context(case) if context else PromptContext()
                prompt = render_prompt(
                    case, self.tokenizer, budget, history=extra.history, examples=extra.examples
                )
                ranked = rank_scores(cset, score(prompt.input_ids), temperature)
                out.append(Prediction(case, ranked, (time.perf_counter() - start) * 1000))
                if on_case:
                    on_case(i)
        if len(members) > 1:
            self._active = members[0].name  # the ensemble scorer leaves the first loaded
        return out

    def _diagnose_batched(
        self,
        cases: Sequence[Case],
        cset: CandidateSet,
        adapter: str | None,
        *,
        method: ScoringMethod,
        budget: int,
        temperature: float,
        batch_size: int,
        on_case: Callable[[int], None] | None,
        context: Callable[[Case], PromptContext] | None,
    ) -> list[Prediction]:
        """:meth:`diagnose` for one adapter (already in place), ``batch_size`` cases per
        forward pass."""
        out: list[Prediction] = []
        for first in range(0, len(cases), batch_size):
            chunk = cases[first : first + batch_size]
            start = time.perf_counter()
            prompts = []
            for case in chunk:
                extra = context(case) if context else PromptContext()
                prompts.append(
                    render_prompt(
                        case, self.tokenizer, budget, history=extra.history, examples=extra.examples
                    ).input_ids
                )
            prefix = self._prefix(adapter, chunk[0].language) if self.prefix_cache else None
            rows = batch_candidate_scores(
                self._net, prompts, cset, method=method, prefix=prefix, max_rows=batch_size
            )
            ms = (time.perf_counter() - start) * 1000 / len(chunk)
            for i, (case, row) in enumerate(zip(chunk, rows, strict=True)):
                out.append(Prediction(case, rank_scores(cset, row, temperature), ms))
                if on_case:
                    on_case(first + i)
        return out

    def _prefix(self, adapter: str | None, language: str | None) -> PrefixKV | None:
        """The cached preamble's keys and values under ``adapter``'s weights (in place now)."""
        key = (adapter, language)
        if key not in self._prefixes:
            from feddx.model.scoring import prefix_kv

            with self._float_layers():
                self._prefixes[key] = prefix_kv(self._net, self._preamble(language))
        return self._prefixes[key]

    def _preamble(self, language: str | None) -> list[int]:
        """The tokens every prompt in ``language`` starts with: what two unrelated synthetic
        cases' prompts share (the chat template, the system prompt, the opening of the
        user turn). No patient's tokens are ever cached."""
        if language not in self._preambles:
            a, b = (
                render_prompt(case, self.tokenizer).input_ids
                for case in (
                    Case(case_id="preamble-a", age=7, sex="female", text="x", language=language),
                    Case(case_id="preamble-b", age=93, sex="male", text="y", language=language),
                )
            )
            n = 0
            while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
                n += 1
            self._preambles[language] = a[:n]
        return self._preambles[language]

    def _drop_prefixes(self, adapter: str | None = None) -> None:
        """Forget the cached preambles of ``adapter`` (``None``: of every weight state)."""
        for key in [k for k in self._prefixes if adapter is None or k[0] == adapter]:
            del self._prefixes[key]

    def quantize_int8(self) -> None:
        """Run the base model's MLP input projections (:data:`INT8_LAYERS`) in int8 on the CPU
        (torch dynamic quantization: int8 weights with one scale per output channel,
        activations quantized per forward pass), for less work per case at some loss of
        accuracy (``benchmarks/bench_serve.py`` measures top-1 against float32). Attention,
        the MLP's output projection, LoRA layers and the LM head stay float32 (in int8 they
        changed many more answers), so adapters swap in as before; with no LoRA layout
        attached yet, quantization waits for the first adapter (LoRA cannot wrap an int8
        layer) or the first base-model scoring. Sets :attr:`int8` and marks
        :attr:`model_name` ``+int8``, so every answer says so. Raises :class:`ModelError` for
        a model not on the CPU."""
        weight = self._net.get_input_embeddings().weight
        if weight.device.type != "cpu":
            raise ModelError(
                f"int8 dynamic quantization runs on the CPU; the model is on {weight.device}"
            )
        if not self.int8:
            self.int8 = True
            self.model_name = f"{self.model_name}+int8" if self.model_name else "+int8"
        if self._lora is not None:
            self._apply_int8()

    def _apply_int8(self) -> None:
        import warnings

        if self._int8_done:
            return
        from feddx.model.scoring import batch_pass_works, trie_pass_works

        # Decide the scoring paths on the float model: per-batch int8 activation scales make
        # the checks' equivalent computations differ by more than float rounding, and would
        # send every case down the slow one-prompt-per-candidate path.
        probe = self._preamble(None)
        if trie_pass_works(self._net, probe):
            batch_pass_works(self._net, probe)
        self._float_modules = {
            name: module
            for name, module in self._net.named_modules()
            if type(module) is torch.nn.Linear
            and "lora_" not in name
            and name.removesuffix(".base_layer").rsplit(".", 1)[-1] in INT8_LAYERS
        }
        if not self._float_modules:
            log.warning(
                "int8: the model has no %s layers; it runs in float32", "/".join(INT8_LAYERS)
            )
        names = set(self._float_modules)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's notice that torchao succeeds it
            qconfig = (
                torch.ao.quantization.per_channel_dynamic_qconfig
                if INT8_PER_CHANNEL
                else torch.ao.quantization.default_dynamic_qconfig
            )
            torch.ao.quantization.quantize_dynamic(
                self._net, dict.fromkeys(names, qconfig), dtype=torch.qint8, inplace=True
            )
        self._int8_done = True
        self._drop_prefixes()

    @contextmanager
    def _float_layers(self) -> Iterator[None]:
        """The float32 layers back in place of the int8 ones for the block (a no-op without
        int8). The cached preamble is computed this way: it starts with the sequence's first
        token, whose outsized activations would set the int8 activation scale of the whole
        pass and crush every other token's; computed once per adapter, it costs nothing per
        case, and the cases' own passes (which start after it) see no first token."""
        if not self._int8_done:
            yield
            return
        swapped = {name: self._net.get_submodule(name) for name in self._float_modules}
        try:
            for name, module in self._float_modules.items():
                self._net.set_submodule(name, module)
            yield
        finally:
            for name, module in swapped.items():
                self._net.set_submodule(name, module)

    @contextmanager
    def weights(self, adapter: AdapterChoice) -> Iterator[Any]:
        """The network with ``adapter``'s weights for the block (an ensemble's first member;
        ``None``: the base model's own weights), e.g. for free generation."""
        members, _, _ = self.settings(adapter)
        if members:
            self.use(members[0].name)
        with self._base_only(not members):
            yield self._net

    @contextmanager
    def _base_only(self, base: bool) -> Iterator[None]:
        """The base model's own weights for the block: LoRA layers bypassed, if attached."""
        ctx = self._net.disable_adapter() if base and self._lora is not None else nullcontext()
        with ctx:
            yield


def with_temperature(pred: Prediction, temperature: float) -> Prediction:
    """The same prediction with probabilities recomputed as ``softmax(score / temperature)``.

    The ranking does not change (a positive temperature preserves the order of the scores).
    """
    probs = probabilities([r.score for r in pred.ranked], temperature)
    ranked = [replace(r, probability=p) for r, p in zip(pred.ranked, probs, strict=True)]
    return replace(pred, ranked=ranked)
