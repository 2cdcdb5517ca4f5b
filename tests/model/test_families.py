"""Every causal LM family trains, scores, federates and serves (issue 21, item 2).

Each family is a tiny random model built here from its config (:mod:`tiny_models`), with the
test tokenizer's vocabulary. Per family, one pass through the whole pipeline: LoRA training
(loss falls, the adapter changes), scoring (the trie scores equal each candidate's
log-likelihood under full sequences), one in-process federated round, and one
``/v1/diagnose`` answer from the service over the round's adapter.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from feddx.data.schema import Case, Finding, Label
from feddx.errors import ModelError
from feddx.model.adapter import LoraSpec, adapter_state, attach_lora, decoder_layers, lora_spec_of
from feddx.model.decoder import choose_runner, split_difference
from feddx.model.prompt import answer_ids, render_prompt
from feddx.model.scoring import candidate_scores, prepare_candidates
from feddx.train.config import TrainConfig
from feddx.train.trainer import train_adapter
from tiny_federation import tiny_federation_config
from tiny_models import FAMILIES, make_tiny_model

LABELS = ("Pneumonia", "Asthma", "Migraine")
SYMPTOMS = {
    "Pneumonia": ("fever", "productive cough"),
    "Asthma": ("wheezing", "night cough"),
    "Migraine": ("throbbing headache", "photophobia"),
}
# Families whose Llama-style layout the split forward reproduces (the frozen-trunk cache).
SPLIT = {"llama", "qwen2", "mistral", "gemma3", "phi3"}


def _cases(n: int) -> list[Case]:
    return [
        Case(
            case_id=f"c{i}",
            age=30 + i,
            sex="female" if i % 2 else "male",
            findings=tuple(Finding(name=s) for s in SYMPTOMS[LABELS[i % 3]]),
            label=Label(diagnosis=LABELS[i % 3]),
        )
        for i in range(n)
    ]


def _reference_scores(model: Any, prompt: list[int], answers: list[list[int]]) -> list[float]:
    """Mean token log-likelihood of each answer, one full ``prompt + answer`` forward each."""
    out = []
    with torch.no_grad():
        for ans in answers:
            ids = torch.tensor([prompt + ans[:-1]])
            logp = model(input_ids=ids).logits[0, len(prompt) - 1 :].float().log_softmax(-1)
            out.append(float(logp[torch.arange(len(ans)), torch.tensor(ans)].mean()))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_and_scores(family: str, tokenizer: Any) -> None:
    torch.manual_seed(0)
    base = make_tiny_model(family, len(tokenizer), layers=3, initializer_range=0.2)
    model = attach_lora(base, LoraSpec(rank=4, alpha=8, dropout=0.0, top_layers=2))
    before = adapter_state(model)
    config = TrainConfig(
        epochs=4, batch_size=4, learning_rate=2e-2, max_prompt_tokens=64, warmup_ratio=0.0
    )
    result = train_adapter(model, tokenizer, _cases(12), config)
    assert result.stats["split_forward"] == float(family in SPLIT)
    # The split path caches the frozen layer below the adapters; the general path cannot.
    assert result.stats["split_layer"] == (1.0 if family in SPLIT else 0.0)
    first, last = result.loss_history[:3], result.loss_history[-3:]  # 3 steps per epoch
    assert sum(last) < sum(first)
    after = adapter_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)

    model.eval()
    prompt = render_prompt(_cases(1)[0], tokenizer, 64).input_ids
    cset = prepare_candidates(tokenizer, list(LABELS))
    got = candidate_scores(model, prompt, cset, method="likelihood")
    answers = [answer_ids(tokenizer, name) for name in LABELS]
    assert got == pytest.approx(_reference_scores(model, prompt, answers), abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_federates_and_serves(family: str, tokenizer: Any, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    make_tiny_model(family, len(tokenizer), layers=2, initializer_range=0.2).save_pretrained(
        model_dir
    )
    tokenizer.save_pretrained(model_dir)
    adapter_dir = _one_federated_round(model_dir, tmp_path)
    body = _diagnose_once(model_dir, adapter_dir, tmp_path)
    assert {d["name"] for d in body["differential"]} == set(LABELS)
    probs = [d["probability"] for d in body["differential"]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4


def _one_federated_round(model_dir: Path, tmp_path: Path) -> Path:
    """One round of two clients through the real ServerApp loop and ClientApp handlers."""
    from feddx.data.jsonl import write_jsonl
    from feddx.federated.client_app import app as client_app
    from feddx.federated.inprocess import InProcessGrid
    from feddx.federated.server_app import GLOBAL_ADAPTER_DIR, run_server

    data = tmp_path / "cases.jsonl"
    write_jsonl(_cases(16), data)
    cfg = tiny_federation_config(
        model_dir,
        f"jsonl:{data}",
        max_eval_cases=2,
        learning_rate=5e-3,
        out_dir=str(tmp_path / "run"),
        activation_cache_dir=str(tmp_path / "activations"),
    )
    nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    grid = InProcessGrid(client_app, cfg.to_run_config(), nodes)
    result = run_server(grid, cfg)
    assert result.rounds_completed == 1
    assert result.history[-1]["accepted"] == 2
    return cfg.out_path() / GLOBAL_ADAPTER_DIR


def _diagnose_once(model_dir: Path, adapter_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """The service's answer for one case, with the federated adapter registered as global."""
    from fastapi.testclient import TestClient

    from feddx.model.predict import Diagnoser
    from feddx.personalize.registry import AdapterRegistry
    from feddx.serve.app import create_app
    from feddx.serve.security import KeyStore
    from feddx.serve.settings import ServeSettings

    registry = AdapterRegistry(tmp_path / "registry")
    registry.register(adapter_dir, level="global", metrics={"top1": 0.5})
    key = KeyStore(tmp_path / "keys.json").add_key("clinic", "region")[0]
    names = tmp_path / "candidates.txt"
    names.write_text("\n".join(LABELS) + "\n")
    settings = ServeSettings(
        model=str(model_dir),
        registry=tmp_path / "registry",
        keys_file=tmp_path / "keys.json",
        audit_log=tmp_path / "audit.jsonl",
        candidates=str(names),  # the federated adapter records none
        batch_window_ms=1.0,
    )
    app = create_app(settings, diagnoser=Diagnoser.load(str(model_dir)), registry=registry)
    case = {"case_id": "q1", "age": 40, "sex": "male", "findings": [{"name": "wheezing"}]}
    with TestClient(app) as client:
        r = client.post(
            "/v1/diagnose",
            json={"case": case, "top_k": 3},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_path_is_split_for_llama_and_general_for_gpt2(
    tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    probe = list(range(10, 30))
    with caplog.at_level(logging.INFO, logger="feddx.model.decoder"):
        llama = make_tiny_model("llama", len(tokenizer))
        assert choose_runner(llama, probe, 64).path == "split"
        gpt2 = make_tiny_model("gpt2", len(tokenizer))
        assert choose_runner(gpt2, probe, 64).path == "general"
        choose_runner(gpt2, probe, 64)  # logged once per model and reason
    lines = [r.getMessage() for r in caplog.records]
    assert (
        lines.count("LlamaForCausalLM: split forward path (matches the model's own forward)") == 1
    )
    assert [x for x in lines if x.startswith("GPT2LMHeadModel: general forward path (")] == lines[
        1:
    ]
    assert len(lines) == 2


def test_gemma3_beyond_its_sliding_window_takes_the_general_path(tokenizer: Any) -> None:
    gemma = make_tiny_model("gemma3", len(tokenizer), sliding_window=16)
    probe = list(range(10, 22))
    assert choose_runner(gemma, probe, 16).path == "split"
    assert choose_runner(gemma, probe, 17).path == "general"


def test_a_model_the_split_forward_does_not_reproduce_takes_the_general_path(
    tokenizer: Any,
) -> None:
    llama = make_tiny_model("llama", len(tokenizer))
    llama.model.norm.weight.data.mul_(2.0)  # the split forward still matches: same modules
    assert choose_runner(llama, list(range(10, 30)), 64).path == "split"
    other = make_tiny_model("llama", len(tokenizer), seed=1)
    # As if the model's forward did something the split forward does not replicate.
    original = other.model.forward
    other.model.forward = lambda *a, **k: _scaled(original(*a, **k))
    assert choose_runner(other, list(range(10, 30)), 64).path == "general"


def _scaled(out: Any) -> Any:
    out.last_hidden_state = out.last_hidden_state * 1.5
    return out


def test_a_model_without_an_lm_head_gets_one_line(tokenizer: Any) -> None:
    from transformers import GPT2Config, GPT2Model

    bare = GPT2Model(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4))
    with pytest.raises(ModelError) as e:
        choose_runner(bare, [1, 2, 3], 3)
    assert "\n" not in str(e.value)
    assert str(e.value) == "GPT2Model lacks an LM head: feddx needs a causal LM"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gradient_checkpointing_recomputes_and_trains_the_same(family: str, tokenizer: Any) -> None:
    """Both paths: each layer's inner modules run twice per step (forward, then again in
    backward) and the run is the same as without checkpointing."""
    runs = []
    for checkpointing in (False, True):
        base = make_tiny_model(family, len(tokenizer), layers=2, initializer_range=0.2)
        torch.manual_seed(0)
        model = attach_lora(base, LoraSpec(rank=4, dropout=0.0))  # every layer: no cache
        layer = decoder_layers(model)[0]
        inner = layer.self_attn if family == "llama" else layer.attn
        calls = _count_calls(inner)
        config = TrainConfig(
            epochs=1,
            batch_size=4,
            learning_rate=2e-2,
            max_prompt_tokens=64,
            gradient_checkpointing=checkpointing,
        )
        result = train_adapter(model, tokenizer, _cases(8), config)
        runs.append((result.loss_history, adapter_state(model), calls[0]))
    (loss0, state0, calls0), (loss1, state1, calls1) = runs
    assert calls1 > calls0
    assert loss1 == pytest.approx(loss0, abs=1e-5)
    assert all(torch.allclose(state0[k], state1[k], atol=1e-5) for k in state0)


def _count_calls(module: torch.nn.Module) -> list[int]:
    count = [0]

    def hook(*_: Any) -> None:
        count[0] += 1

    module.register_forward_hook(hook)
    return count


def test_final_logit_softcapping_is_applied(tokenizer: Any) -> None:
    gemma = make_tiny_model("gemma3", len(tokenizer), final_logit_softcapping=2.0)
    probe = list(range(10, 30))
    runner = choose_runner(gemma, probe, 64)
    assert runner.path == "split" and runner.softcap == 2.0
    assert split_difference(runner, probe) < 1e-5
    runner.softcap = None  # as if the cap were ignored: the logits no longer match
    assert split_difference(runner, probe) > 1e-3


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_bfloat16_model_trains_with_float32_losses(family: str, tokenizer: Any) -> None:
    """The code that runs on CUDA in bf16, here on the CPU: hidden states (and the cached
    frozen layer) in the model's dtype, losses in float32."""
    from feddx.train.batching import collate, encode_cases
    from feddx.train.forward import training_runner

    base = make_tiny_model(family, len(tokenizer), layers=2, initializer_range=0.2)
    model = attach_lora(base.to(torch.bfloat16), LoraSpec(rank=4, top_layers=1))
    examples = encode_cases(_cases(8), tokenizer, 64)
    runner = training_runner(model, examples)
    assert runner.dtype == torch.bfloat16
    batch = collate(examples, [0, 1], tokenizer.pad_token_id)
    losses = runner.answer_losses(runner.embed(batch.input_ids), 0, batch)
    assert losses.dtype == torch.float32
    config = TrainConfig(epochs=2, batch_size=4, learning_rate=2e-2, max_prompt_tokens=64)
    result = train_adapter(model, tokenizer, _cases(8), config)
    assert result.stats["split_layer"] == (1.0 if family == "llama" else 0.0)
    assert all(math.isfinite(x) for x in result.loss_history)


def test_hugging_face_checkpointing_left_on_does_not_stop_training(tokenizer: Any) -> None:
    """Its reentrant checkpoint gives no gradient above the cached trunk: off while training,
    restored afterwards."""
    base = make_tiny_model("llama", len(tokenizer), layers=3, initializer_range=0.2)
    base.gradient_checkpointing_enable({"use_reentrant": True})  # as older peft recipes do
    model = attach_lora(base, LoraSpec(rank=4, top_layers=2))
    before = adapter_state(model)
    config = TrainConfig(epochs=1, batch_size=4, learning_rate=2e-2, max_prompt_tokens=64)
    result = train_adapter(model, tokenizer, _cases(8), config)
    assert result.stats["split_layer"] == 1.0
    after = adapter_state(model)
    # Layer 1 too (the first above the cached trunk, not the pruned last layer).
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert all(layer.gradient_checkpointing for layer in decoder_layers(model))


# The README's "Bring your own model and GPU" table: model_type and `auto` LoRA targets.
@pytest.mark.parametrize(
    ("family", "model_type", "targets"),
    [
        ("llama", "llama", ("q_proj", "v_proj")),
        ("qwen2", "qwen2", ("q_proj", "v_proj")),
        ("mistral", "mistral", ("q_proj", "v_proj")),
        ("gemma3", "gemma3_text", ("q_proj", "v_proj")),
        ("phi3", "phi3", ("qkv_proj",)),
        ("gpt_neo", "gpt_neo", ("q_proj", "v_proj")),
        ("gpt2", "gpt2", ("c_attn",)),
        ("bloom", "bloom", ("query_key_value",)),
    ],
)
def test_auto_targets_resolve_per_family_and_match_the_attached_spec(
    family: str, model_type: str, targets: tuple[str, ...], tokenizer: Any
) -> None:
    spec = LoraSpec(rank=4, top_layers=1)
    model = attach_lora(make_tiny_model(family, len(tokenizer)), spec)
    assert model.get_base_model().config.model_type == model_type
    assert lora_spec_of(model).target_modules == targets
    assert spec.resolved(model) == lora_spec_of(model)
    everything = LoraSpec(rank=4, target_modules=("all-linear",)).resolved(model)
    assert set(targets) < set(everything.target_modules)
