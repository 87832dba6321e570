"""Weight loads in threads at once (the server loads in threads) never leave a parameter on the meta device."""

from __future__ import annotations

import threading

import torch
from transformers import AutoModelForCausalLM

from tailorlm.hf_load import pretrained
from tests.tiny import make_tiny_model


def test_concurrent_loads_get_every_weight(tmp_path):
    path = make_tiny_model("llama", tmp_path / "tiny")
    metas: list[int] = []

    def load() -> None:
        model = pretrained(AutoModelForCausalLM, path, dtype=torch.float32)
        metas.append(sum(t.is_meta for t in model.state_dict().values()))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metas == [0, 0, 0, 0]
