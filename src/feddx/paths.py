"""Where feddx keeps its machine-local caches (models, activations, spaCy pipelines) and the
adapter registry.

Below every package (it imports nothing of feddx), so ``data/`` (de-identification's spaCy
pipeline) and ``model/`` (dequantized weights) find the same root without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

# The folder a federation's final global adapter is saved in, under its run's out-dir: the
# Flower ServerApp writes it, the registry (``register-run``) and the demo read it. Here, below
# every package, so the readers need not import the ServerApp (and Flower) for one name.
GLOBAL_ADAPTER_DIR = "global_adapter"
# Every round's global adapter, ``round-NNNNN`` under this folder of the out-dir: a round can be
# chosen on a validation split after the run (the demo does), not only the last one used.
ROUND_ADAPTERS_DIR = "round_adapters"


def cache_root() -> Path:
    """The feddx cache directory (``$FEDDX_CACHE`` or ``~/.cache/feddx``)."""
    return Path(os.environ.get("FEDDX_CACHE", Path.home() / ".cache" / "feddx")).expanduser()


def model_cache_root() -> Path:
    """Where dequantized base models are cached (one folder per source and content key)."""
    return cache_root() / "models"


def activation_cache_root() -> Path:
    """Where frozen-layer activations are cached when no directory is given; entries are keyed
    by base weights and token ids, so every run on this machine can share it."""
    return cache_root() / "activations"


def spacy_cache_root() -> Path:
    """Where the spaCy pipelines Presidio loads are saved."""
    return cache_root() / "spacy"


def registry_root() -> Path:
    """The default adapter registry (``$FEDDX_REGISTRY``, else ``feddx/registry`` under
    ``$XDG_DATA_HOME`` or ``~/.local/share``): data, not a cache, since adapters registered
    there are the only copy a service may have."""
    explicit = os.environ.get("FEDDX_REGISTRY")
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "feddx" / "registry"
