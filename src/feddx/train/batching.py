"""Turn cases into training examples and examples into batches with little padding.

An example is ``prompt + answer[:-1]``: the last answer token (end-of-turn) is only ever a
target, never an input, so it is not fed to the model. The positions that predict answer tokens
are ``len(prompt) - 1 ... len(prompt) + len(answer) - 2``; only those reach the LM head.

Batches are right-padded. With a causal model, real tokens never attend to padding on their
right, so no attention mask is needed at all (the fast ``is_causal`` attention path), and
position ids are simply ``0..L-1`` for every row. Padding is kept small by length bucketing:
the shuffled data is cut into chunks, each chunk sorted by length and cut into batches, and
the batch order shuffled again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from feddx.data.cases import case_reference
from feddx.data.schema import Case
from feddx.errors import ConfigError, DataError
from feddx.model.prompt import answer_ids, render_prompt


@dataclass(frozen=True)
class Example:
    """One training example as token ids (never raw text)."""

    input_ids: tuple[int, ...]
    answer: tuple[int, ...]
    # Per answer token, the tokens a candidate may continue with there (``answer_loss=
    # "candidates"``); ``None`` trains over the whole vocabulary.
    choices: tuple[tuple[int, ...], ...] | None = None

    @property
    def first(self) -> int:
        """Position whose output predicts the first answer token."""
        return len(self.input_ids) - len(self.answer)

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_cases(
    cases: Sequence[Case],
    tokenizer: Any,
    max_prompt_tokens: int,
    candidates: Sequence[str] | None = None,
) -> list[Example]:
    """Render every case with the one prompt renderer and append its answer tokens.

    With ``candidates``, each example also gets its answer's :attr:`Example.choices` in the
    candidates' trie (for the candidate-restricted loss).

    Raises :class:`DataError` for an empty dataset, cases without a label (naming how many
    and the first by position and pseudonym, :func:`~feddx.data.cases.case_reference`; never
    a case id: these messages reach terminals, CI logs and Flower) or, with ``candidates``, a
    label outside the list; and
    :class:`ConfigError` when ``max_prompt_tokens`` cannot hold even the bare prompt template
    or the candidate list is unusable.
    """
    if not cases:
        raise DataError("no training cases: the dataset is empty")
    unlabeled = [i for i, c in enumerate(cases) if c.label is None]
    if unlabeled:
        raise DataError(
            f"{len(unlabeled)} of {len(cases)} training cases have no label (first: "
            f"{_where(cases, unlabeled[0])}); training needs a diagnosis for every case"
        )
    answers = [tuple(answer_ids(tokenizer, c.require_label())) for c in cases]
    choices = (
        None if candidates is None else _candidate_choices(cases, answers, tokenizer, candidates)
    )
    out: list[Example] = []
    for i, (case, answer) in enumerate(zip(cases, answers, strict=True)):
        try:
            prompt = render_prompt(case, tokenizer, max_prompt_tokens)
        except ValueError as e:
            raise ConfigError(f"max_prompt_tokens: {e}") from None
        if not answer:
            raise DataError(f"{_where(cases, i)}: the diagnosis renders to no tokens")
        out.append(
            Example(
                tuple(prompt.input_ids) + answer[:-1],
                answer,
                None if choices is None else choices[answer],
            )
        )
    return out


def _candidate_choices(
    cases: Sequence[Case],
    answers: Sequence[tuple[int, ...]],
    tokenizer: Any,
    candidates: Sequence[str],
) -> dict[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """Each candidate answer's token ids -> its per-token choices in the candidate trie
    (``answers``: the cases' answer token ids, in order)."""
    from feddx.model.scoring import prepare_candidates, trie_choices

    try:
        # The scorer's own validation and tokenisation, so training and scoring agree.
        seqs = list(prepare_candidates(tokenizer, candidates).token_ids)
    except ValueError as e:
        raise ConfigError(f"answer_loss 'candidates': {e}") from None
    if len(seqs) < 2:
        raise ConfigError("answer_loss 'candidates' needs at least 2 candidates")
    known = set(seqs)
    outside = [i for i, a in enumerate(answers) if a not in known]
    if outside:
        raise DataError(
            f"{len(outside)} of {len(cases)} training cases have a diagnosis outside the "
            f"{len(candidates)} candidates (first: {_where(cases, outside[0])}, "
            f"{cases[outside[0]].require_label().diagnosis!r}); the candidate-restricted loss "
            "needs every label among them"
        )
    return dict(zip(seqs, trie_choices(seqs), strict=True))


def _where(cases: Sequence[Case], i: int) -> str:
    """``training case 3 (case#...)``: a position and a pseudonym, never the id itself."""
    return f"training case {i + 1} ({case_reference(cases[i].case_id)})"


@dataclass
class Batch:
    """A right-padded batch and where its answer tokens are.

    ``rows``/``cols`` index the answer-predicting positions of ``input_ids``, ``targets`` holds
    the token each should predict (``rows`` also says which example a token belongs to).
    """

    indices: list[int]
    input_ids: torch.Tensor  # [B, L] long
    lengths: list[int]
    rows: torch.Tensor  # [n] long
    cols: torch.Tensor  # [n] long
    targets: torch.Tensor  # [n] long
    # [n, W] long, -1 padded: the tokens each answer position chooses among (candidate loss).
    choices: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """The batch with its tensors on ``device`` (itself when they are there already)."""
        device = torch.device(device)
        if self.input_ids.device == device:
            return self
        choices = None if self.choices is None else self.choices.to(device)
        return Batch(
            self.indices,
            self.input_ids.to(device),
            self.lengths,
            self.rows.to(device),
            self.cols.to(device),
            self.targets.to(device),
            choices,
        )

    @property
    def n_answer_tokens(self) -> int:
        return int(self.targets.numel())

    @property
    def n_tokens(self) -> int:
        return int(sum(self.lengths))

    @property
    def n_slots(self) -> int:
        return int(self.input_ids.numel())


def collate(examples: Sequence[Example], indices: Sequence[int], pad_id: int) -> Batch:
    """Right-pad the examples at ``indices`` into one batch.

    Examples with :attr:`Example.choices` keep only the answer positions with two or more
    choices: a position with one continuation has probability 1 under the restricted softmax,
    so it carries neither loss nor gradient and need not reach the LM head.
    """
    chosen = [examples[i] for i in indices]
    width = max(len(e) for e in chosen)
    ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
    rows: list[int] = []
    cols: list[int] = []
    targets: list[int] = []
    options: list[tuple[int, ...]] = []
    restricted = all(e.choices is not None for e in chosen)
    for r, e in enumerate(chosen):
        ids[r, : len(e)] = torch.tensor(e.input_ids, dtype=torch.long)
        for k, tok in enumerate(e.answer):
            if restricted:
                assert e.choices is not None
                if len(e.choices[k]) < 2:
                    continue
                options.append(e.choices[k])
            rows.append(r)
            cols.append(e.first + k)
            targets.append(tok)
    choice_ids = None
    if restricted:
        choice_ids = torch.full((len(options), max(map(len, options))), -1, dtype=torch.long)
        for j, opts in enumerate(options):
            choice_ids[j, : len(opts)] = torch.tensor(opts, dtype=torch.long)
    return Batch(
        indices=list(indices),
        input_ids=ids,
        lengths=[len(e) for e in chosen],
        rows=torch.tensor(rows, dtype=torch.long),
        cols=torch.tensor(cols, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        choices=choice_ids,
    )


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    # One independent, reproducible stream per (seed, epoch, purpose): the data order of epoch
    # e never depends on how many random numbers anything else drew, which is what makes a
    # resumed run replay exactly.
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7_919 + stream) % (2**63))
    return g


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, bucket_batches: int, *, seed: int, epoch: int
) -> list[list[int]]:
    """The batches of one epoch: shuffle, sort by length within chunks, shuffle the batches."""
    g = _generator(seed, epoch, 0)
    order = torch.randperm(len(lengths), generator=g).tolist()
    chunk = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: -lengths[i])
        batches.extend(part[j : j + batch_size] for j in range(0, len(part), batch_size))
    shuffle = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in shuffle]


def poisson_batches(
    n: int, sample_rate: float, n_batches: int, *, seed: int, epoch: int
) -> list[list[int]]:
    """DP-SGD's logical batches: each example joins each batch independently with probability
    ``sample_rate`` (the sampling the privacy accountant assumes). Batches may be empty."""
    g = _generator(seed, epoch, 1)
    mask = torch.rand((n_batches, n), generator=g) < sample_rate
    return [torch.nonzero(row).flatten().tolist() for row in mask]


def split_by_length(
    indices: Sequence[int], lengths: Sequence[int], batch_size: int
) -> list[list[int]]:
    """Cut a logical batch into micro-batches of at most ``batch_size`` similar lengths."""
    ordered = sorted(indices, key=lambda i: -lengths[i])
    return [ordered[j : j + batch_size] for j in range(0, len(ordered), batch_size)]
