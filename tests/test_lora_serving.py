"""LoRA adapters served over their base: parity with PEFT, mixed batches, runtime, HTTP and CLI.

Parity runs in float64, where summation-order differences cannot flip a greedy choice; float32 runs
(the server, the CLI) check that every path gives the same tokens as the runtime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tailorlm.config import Settings
from tailorlm.engine import Engine, SamplingParams, load_model
from tailorlm.errors import ModelNotFoundError, UnsupportedModelError
from tailorlm.runtime import Completion, open_model, stream_text
from tailorlm.store import AdapterStore, ModelStore
from tests.server_harness import live_server
from tests.spec import validate
from tests.tiny import make_tiny_adapter, make_tiny_model, save_tiny_tokenizer

PROMPTS = [[5, 6, 7, 8], [9, 10], list(range(20, 50)), [3]]
# Per architecture: adapter A (attention and MLP layers) and adapter B (other layers, rsLoRA, a per-module alpha).
ADAPTERS = {
    "llama": (dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"]),
              dict(r=8, lora_alpha=8, target_modules=["k_proj", "gate_proj", "up_proj"], use_rslora=True,
                   alpha_pattern={"up_proj": 4})),
    "gpt2": (dict(r=4, lora_alpha=16, target_modules=["c_attn", "c_proj"]),
             dict(r=2, lora_alpha=8, target_modules=["c_fc"], use_rslora=True)),
}


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def read_adapter(folder: Path) -> tuple[dict, dict]:
    return load_file(folder / "adapter_model.safetensors"), json.loads((folder / "adapter_config.json").read_text())


@pytest.fixture(scope="module", params=list(ADAPTERS))
def tiny(request, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A tiny base model and two random adapters over it."""
    root = tmp_path_factory.mktemp(request.param)
    base = make_tiny_model(request.param, root / "base")
    a, b = ADAPTERS[request.param]
    return base, {"a": make_tiny_adapter(base, root / "a", seed=1, **a), "b": make_tiny_adapter(base, root / "b", seed=2, **b)}


@pytest.fixture(scope="module")
def engine64(tiny):
    base, adapters = tiny
    eng = Engine(load_model(base, dtype="float64"), max_batch=8)
    for name, folder in adapters.items():
        eng.load_adapter(name, *read_adapter(folder))
    yield eng
    eng.shutdown()


def reference(base: Path, adapter: Path | None, prompt: list[int], n: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float64)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def test_greedy_parity_with_peft(tiny, engine64):
    base, adapters = tiny
    for name, folder in [(None, None), *adapters.items()]:
        want = reference(base, folder, PROMPTS[0], 16)
        assert engine64.submit(PROMPTS[0], greedy(16), adapter=name).tokens() == want, name
    assert len({tuple(engine64.submit(PROMPTS[0], greedy(16), adapter=n).tokens()) for n in (None, "a", "b")}) == 3


def test_mixed_batch_equals_alone(engine64):
    """Base rows and rows of two adapters share prefill/decode steps, each getting exactly its own tokens."""
    plan = [(p, name, 10 + 3 * i) for i, p in enumerate(PROMPTS) for name in (None, "a", "b")]
    alone = [engine64.submit(p, greedy(n), adapter=name).tokens() for p, name, n in plan]
    handles = [engine64.submit(p, greedy(n), adapter=name) for p, name, n in plan]
    assert [h.tokens() for h in handles] == alone


# Per architecture: five adapters of different ranks, most targeting only some layers, for one mixed batch.
MANY = {
    "llama": [dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
              dict(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                        "gate_proj", "up_proj", "down_proj"]),
              dict(r=8, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"]),
              dict(r=3, lora_alpha=6, target_modules=["k_proj", "o_proj"], use_rslora=True),
              dict(r=16, lora_alpha=32, target_modules=["q_proj", "down_proj"], alpha_pattern={"down_proj": 8})],
    "gpt2": [dict(r=2, lora_alpha=4, target_modules=["c_attn"]),
             dict(r=4, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"]),
             dict(r=8, lora_alpha=8, target_modules=["c_fc"]),
             dict(r=3, lora_alpha=6, target_modules=["c_proj"], use_rslora=True),
             dict(r=16, lora_alpha=32, target_modules=["c_attn", "c_fc"])],
}


@pytest.mark.parametrize("arch", list(MANY))
def test_mixed_batch_of_many_adapters(arch, tmp_path):
    """Base rows and rows of five adapters (ranks 2..16, different layers) decode together, each row getting
    exactly the tokens of its adapter run alone; still so after one adapter is unloaded and one replaced."""
    base = make_tiny_model(arch, tmp_path / "base")
    folders = {f"l{i}": make_tiny_adapter(base, tmp_path / f"l{i}", seed=10 + i, **spec)
               for i, spec in enumerate(MANY[arch])}
    eng = Engine(load_model(base, dtype="float64"), max_batch=16)
    for name, folder in folders.items():
        eng.load_adapter(name, *read_adapter(folder))
    names = [None, *folders]

    def check(names: list[str | None]) -> dict[str | None, list[int]]:
        plan = [(PROMPTS[i % len(PROMPTS)], name, 8 + 2 * i) for i in range(2) for name in names]
        plan += [(PROMPTS[2 + i % 2], name, 12) for i, name in enumerate(names)]
        alone = [eng.submit(p, greedy(n), adapter=name).tokens() for p, name, n in plan]
        handles = [eng.submit(p, greedy(n), adapter=name) for p, name, n in plan]
        assert [h.tokens() for h in handles] == alone
        return {name: toks for (p, name, _), toks in zip(plan, alone) if p == PROMPTS[0]}

    first = check(names)
    assert len({tuple(t) for t in first.values()}) >= 4  # the adapters do change the tokens
    eng.unload_adapter("l1")
    eng.load_adapter("l3", *read_adapter(folders["l0"]))  # replaced: l3 now serves l0's weights
    after = check([None, "l0", "l2", "l3", "l4"])
    assert after["l3"] == first["l0"] and after["l4"] == first["l4"] and after[None] == first[None]
    eng.shutdown()


def test_unknown_unloaded_and_misfit_adapters(tiny):
    base, adapters = tiny
    eng = Engine(load_model(base, dtype="float64"), max_batch=4)
    with pytest.raises(ModelNotFoundError, match="not loaded"):
        eng.submit(PROMPTS[0], greedy(4), adapter="a")
    eng.load_adapter("a", *read_adapter(adapters["a"]), version="v1")
    assert eng.adapters == {"a": "v1"}
    running = eng.submit(PROMPTS[2], greedy(200), adapter="a")
    events = iter(running)
    next(events)  # it is decoding now
    eng.unload_adapter("a")
    assert list(events)[-1].finish_reason == "error"  # ended, not silently continued on the base
    with pytest.raises(ModelNotFoundError):
        eng.submit(PROMPTS[0], greedy(4), adapter="a")
    tensors, config = read_adapter(adapters["a"])
    first = next(k for k in tensors if k.endswith("lora_A.weight"))
    tensors[first] = tensors[first][:, :-1]
    with pytest.raises(UnsupportedModelError, match="does not fit"):
        eng.load_adapter("bad", tensors, config)
    assert eng.submit(PROMPTS[0], greedy(4)).tokens()  # the base still serves, unwrapped again
    assert not eng.core.runner.lora.layers
    eng.shutdown()


# -- through the store, the runtime, the server and the CLI (float32, llama) -----------------------------

BASE = "tiny-llama"
FT_A = "ft:tiny-llama:alpha:ftjob-aaa"
FT_B = "ft:tiny-llama:beta:ftjob-bbb"
HELLO = [{"role": "user", "content": "Hello world, how are you today?"}]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A store with a tiny llama (with a tokenizer and chat template) and two adapters over it."""
    root = tmp_path_factory.mktemp("lora-home")
    base = save_tiny_tokenizer(make_tiny_model("llama", root / "base"))
    home = root / "home"
    ModelStore(home).import_path(base, name=BASE, show_progress=False)
    a, b = ADAPTERS["llama"]
    adapters = AdapterStore(home)
    adapters.add(FT_A, BASE, make_tiny_adapter(base, root / "a", seed=1, **a), extra={"job": "ftjob-aaa"})
    adapters.add(FT_B, BASE, make_tiny_adapter(base, root / "b", seed=2, **b))
    return home


def generate_text(model, messages=HELLO, n: int = 12) -> str:
    from tailorlm.runtime import chat_prompt

    result = Completion()
    for _ in stream_text(model, chat_prompt(model, messages), greedy(n), None, result):
        pass
    return result.text


@pytest.fixture(scope="module")
def texts(home) -> dict[str, str]:
    """What the runtime answers for the base and each adapter (one engine, adapters opened by name)."""
    settings = Settings(home=home, threads=2)
    out = {}
    for name in (BASE, FT_A, FT_B):
        model = open_model(name, settings=settings, show_progress=False)
        assert model.name == name and (model.adapter is not None) == name.startswith("ft:")
        out[name] = generate_text(model)
        model.close()
    assert len(set(out.values())) == 3
    return out


def test_http_chat_models_and_404(home, texts, tmp_path):
    with live_server(Settings(home=home, threads=2, default_model=BASE)) as live:
        client = live.client()
        for name in (FT_A, BASE, FT_B):
            out = client.chat.completions.create(model=name, messages=HELLO, temperature=0, max_tokens=12,
                                                 extra_body={"ignore_eos": True})
            assert out.model == name and out.choices[0].message.content == texts[name]
        with live.http() as http:
            listed = http.get("/v1/models").json()
            validate(listed, "ListModelsResponse")
            cards = {m["id"]: m for m in listed["data"]}
            assert cards[FT_A]["owned_by"] == "user" and cards[BASE]["owned_by"] == "tailorlm"
            validate(http.get(f"/v1/models/{FT_A}").json(), "Model")
            missing = http.post("/v1/chat/completions", json={"model": "ft:tiny-llama:nope:ftjob-x", "messages": HELLO})
            assert missing.status_code == 404
            validate(missing.json(), "ErrorResponse")
            assert missing.json()["error"]["code"] == "model_not_found"
            assert http.get("/v1/models/ft:tiny-llama:nope:ftjob-x").status_code == 404
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="ft:tiny-llama:nope:ftjob-x", messages=HELLO)
        # A new adapter shows at once, without a restart; a removed one is gone at once.
        new = "ft:tiny-llama:gamma:ftjob-ccc"
        AdapterStore(home).add(new, BASE, make_tiny_adapter(home.parent / "base", tmp_path / "c", seed=3,
                                                            **ADAPTERS["llama"][0]))
        assert new in [m.id for m in client.models.list().data]
        assert client.chat.completions.create(model=new, messages=HELLO, max_tokens=2).model == new
        AdapterStore(home).remove(new)
        assert new not in [m.id for m in client.models.list().data]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=new, messages=HELLO, max_tokens=2)
        engines = live.app.state.tailor.registry.loaded()
        assert engines == [BASE]  # one engine serves the base and all its adapters


def test_cli_generate_with_adapter(home, texts):
    env = {**os.environ, "TAILOR_HOME": str(home), "TAILOR_THREADS": "2"}
    done = subprocess.run([sys.executable, "-m", "tailorlm", "generate", FT_A, HELLO[0]["content"], "--json",
                           "-n", "12"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["model"] == FT_A and out["usage"]["completion_tokens"] <= 12
    assert texts[FT_A].startswith(out["text"])  # the CLI stops at EOS; the runtime run above ignored it
