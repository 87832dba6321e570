"""The engine on the real default model: load time, greedy parity with transformers, batching."""

from __future__ import annotations


import pytest
import torch
from transformers import AutoModelForCausalLM

from tailorlm.config import DEFAULT_MODEL
from tailorlm.engine import SamplingParams
from tailorlm.runtime import chat_prompt, open_model
from tailorlm.store import ModelStore

pytestmark = pytest.mark.slow
QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "Why do cats purr?"]


@pytest.fixture(scope="module")
def model(default_store_home):
    from tailorlm.config import Settings

    opened = open_model(settings=Settings(home=default_store_home), show_progress=False)
    yield opened
    opened.close()


def test_greedy_parity_with_transformers_generate(model, default_store_home):
    path = ModelStore(default_store_home).path(DEFAULT_MODEL)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for q in QUESTIONS:
        ids = chat_prompt(model, [{"role": "user", "content": q}])
        want = ref.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
        got = model.engine.submit(ids, SamplingParams(temperature=0, max_tokens=24)).tokens()
        assert got == want[: len(got)] and len(got) == len(want), q


def test_batched_equals_alone_on_the_real_model(model):
    prompts = [chat_prompt(model, [{"role": "user", "content": q}]) for q in QUESTIONS]
    params = SamplingParams(temperature=0, max_tokens=24)
    alone = [model.engine.submit(p, params).tokens() for p in prompts]
    together = [h.tokens() for h in [model.engine.submit(p, params) for p in prompts]]
    assert together == alone
