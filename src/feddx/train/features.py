"""Cache of frozen bottom-layer activations.

When LoRA adapters sit only on the top ``N`` layers, the layers below them are frozen: for a
given example their output never changes, across epochs and across federated rounds. It is
computed once (batched, sorted by length, no autograd) and reused, so later epochs run only
the top layers: for SmolLM2 with adapters on 4 of 30 layers, about 7x fewer FLOPs per epoch.

Entries live in memory up to a byte budget and, when a ``directory`` is given, on disk as one
safetensors file per example, keyed by

- a fingerprint of the frozen weights (a strided sample of every bottom-layer tensor, the
  model config and the split layer), so another base model never reads these entries, and
- a SHA-256 of the example's token ids (prompt and answer), so a changed prompt is a new entry.

Files are written to a temporary name and renamed; an unreadable or mis-shaped file is
recomputed and rewritten.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from feddx.io import atomic_write_with
from feddx.model.adapter import unwrap_peft
from feddx.model.decoder import CausalLMRunner, DecoderRunner
from feddx.train.batching import Example, collate

log = logging.getLogger(__name__)

_FORMAT = 1
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def frozen_fingerprint(runner: CausalLMRunner, split: int) -> str:
    """A key for the weights below layer ``split``: cheap (a strided sample of each tensor),
    yet any retrained, re-quantized or different model changes it."""
    h = hashlib.sha256(f"feddx-activations-v{_FORMAT}:{split}".encode())
    config = unwrap_peft(runner.model).config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "architectures", "dtype"):
        config.pop(volatile, None)
    h.update(repr(sorted(config.items(), key=lambda kv: kv[0])).encode())
    modules = [("embed", runner.embed_tokens)] + [
        (f"layer{i}", runner.layers[i]) for i in range(split)
    ]
    for prefix, module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            if "lora_" in name:  # adapters train; the key is about the frozen base weights
                continue
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            h.update(f"{prefix}.{name}:{tuple(tensor.shape)}".encode())
            h.update(flat[::step].to(device="cpu", dtype=torch.float32).numpy().tobytes())
    return h.hexdigest()[:24]


def example_key(example: Example) -> str:
    ids = torch.tensor(example.input_ids, dtype=torch.int32).numpy().tobytes()
    return hashlib.sha256(ids).hexdigest()


class ActivationCache:
    """Hidden states entering layer ``split`` for each example of a training run.

    Call :meth:`build` once, then :meth:`batch_input` per batch. Examples that fit neither the
    memory budget nor a disk directory are recomputed when needed (correct, just slower).
    """

    def __init__(
        self,
        runner: DecoderRunner,
        examples: Sequence[Example],
        split: int,
        *,
        dtype: str = "float32",
        max_bytes: int = 2 << 30,
        directory: Path | None = None,
    ) -> None:
        if not 0 < split < runner.n_layers:
            raise ValueError(f"split layer {split} out of range 1..{runner.n_layers - 1}")
        self.runner = runner
        self.examples = examples
        self.split = split
        self.dtype = _DTYPES[dtype]
        self.max_bytes = max_bytes
        self.directory: Path | None = None
        if directory is not None:
            key = frozen_fingerprint(runner, split)
            self.directory = Path(directory) / f"{key}-L{split}-{dtype}"
        self._memory: dict[int, torch.Tensor] = {}
        self._on_disk: set[int] = set()
        self._bytes = 0
        self.stats = {"computed": 0, "from_disk": 0, "recomputed_corrupt": 0, "tokens": 0}

    # --- storage -------------------------------------------------------------------------
    def _path(self, i: int) -> Path:
        assert self.directory is not None
        key = example_key(self.examples[i])
        return self.directory / key[:2] / f"{key}.safetensors"

    def _read(self, i: int) -> torch.Tensor | None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self._path(i)
        if not path.is_file():
            return None
        try:
            tensor = load_file(str(path))["h"]
        except (SafetensorError, OSError, KeyError, ValueError):
            tensor = None
        expected = (len(self.examples[i]), self.runner.hidden_size)
        kept = (self.dtype, torch.float32, self.runner.dtype)
        dtype_ok = tensor is not None and tensor.dtype in kept
        if tensor is None or tuple(tensor.shape) != expected or not dtype_ok:
            log.warning("activation cache entry %s is corrupt; recomputing it", path.name)
            self.stats["recomputed_corrupt"] += 1
            return None
        return tensor

    def _write(self, i: int, tensor: torch.Tensor) -> None:
        from safetensors.torch import save_file

        atomic_write_with(
            self._path(i), lambda tmp: save_file({"h": tensor.contiguous()}, str(tmp))
        )

    def _storable(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` in CPU memory in the storage dtype (the accelerator's memory is kept for
        the model), except where float16 would overflow: some models' residual streams carry
        outliers in the tens of thousands (SmolLM2: ~25,000), and an entry that does not fit
        is kept in its own dtype rather than turned into infinities."""
        if self.dtype == torch.float16 and float(hidden.abs().max()) > 6e4:
            return hidden.to("cpu").clone()
        return hidden.to(device="cpu", dtype=self.dtype).clone()

    def _keep(self, i: int, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._bytes + size <= self.max_bytes:
            self._memory[i] = tensor
            self._bytes += size
        elif self.directory is not None:
            self._on_disk.add(i)

    # --- building ------------------------------------------------------------------------
    def build(
        self, *, token_budget: int = 2048, on_progress: Callable[[int], None] | None = None
    ) -> None:
        """Load what the disk cache has and compute the rest, in batches of about
        ``token_budget`` tokens sorted by length (almost no padding)."""
        todo: list[int] = []
        for i in range(len(self.examples)):
            tensor = self._read(i) if self.directory is not None else None
            if tensor is None:
                todo.append(i)
                continue
            self.stats["from_disk"] += 1
            self._keep(i, tensor)
            if on_progress:
                on_progress(1)
        if self.directory is None:
            # Without a disk, compute only what the memory budget can hold; the rest is
            # computed on the fly each time (avoids computing it twice up front).
            budget, kept = self.max_bytes, []
            for i in sorted(todo, key=lambda i: len(self.examples[i])):
                size = len(self.examples[i]) * self.runner.hidden_size * self.dtype.itemsize
                if size > budget:
                    break
                budget -= size
                kept.append(i)
            if len(kept) < len(todo) and self.max_bytes > 0:
                log.warning(
                    "activation cache: %d of %d examples exceed the %d MB budget and will be "
                    "recomputed each epoch (raise activation_cache_max_mb or give a cache dir)",
                    len(todo) - len(kept),
                    len(todo),
                    self.max_bytes >> 20,
                )
            todo = kept
        todo.sort(key=lambda i: -len(self.examples[i]))
        start = 0
        while start < len(todo):
            width = len(self.examples[todo[start]])
            size = max(1, token_budget // width)
            chunk = todo[start : start + size]
            start += size
            hidden = self.compute(chunk)
            for row, i in enumerate(chunk):
                tensor = self._storable(hidden[row, : len(self.examples[i])])
                self.stats["computed"] += 1
                self.stats["tokens"] += hidden.shape[1]
                if self.directory is not None:
                    self._write(i, tensor)
                self._keep(i, tensor)
            if on_progress:
                on_progress(len(chunk))

    def compute(self, indices: Sequence[int]) -> torch.Tensor:
        """Run the frozen layers for ``indices`` (right-padded ``[B, L, H]`` on the model's
        device, in its dtype)."""
        batch = collate(self.examples, indices, pad_id=0).to(self.runner.device)
        with torch.no_grad():
            return self.runner.run_layers(self.runner.embed(batch.input_ids), 0, self.split)

    # --- use -----------------------------------------------------------------------------
    def batch_input(self, indices: Sequence[int]) -> torch.Tensor:
        """The input of layer ``split`` for a batch (cached rows, right-padded with zeros) on
        the model's device, in its dtype."""
        width = max(len(self.examples[i]) for i in indices)
        out = torch.zeros(len(indices), width, self.runner.hidden_size)
        missing: list[int] = []
        for row, i in enumerate(indices):
            tensor = self._memory.get(i)
            if tensor is None and i in self._on_disk:
                tensor = self._read(i)
            if tensor is None:
                missing.append(row)
                continue
            out[row, : tensor.shape[0]] = tensor
        if missing:
            fresh = self.compute([indices[r] for r in missing])
            for k, row in enumerate(missing):
                n = len(self.examples[indices[row]])
                # Round-trip through the storage dtype so every path sees the same numbers.
                out[row, :n] = self._storable(fresh[k, :n])
        return out.to(device=self.runner.device, dtype=self.runner.dtype)

    @property
    def memory_bytes(self) -> int:
        return self._bytes
