"""Tiny random models (2 layers, hidden 64) of several architectures, saved as HF folders.

Weights are initialised with a large std so that next-token distributions are peaked:
parity tests compare greedy tokens, and a flat distribution would make ties likely.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tests.tiny_gptoss import CONFIG as GPTOSS

VOCAB = 320
_LLAMA_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=256)

_CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", **_LLAMA_SHAPE),
    "qwen2": dict(model_type="qwen2", **_LLAMA_SHAPE),
    "mistral": dict(model_type="mistral", **_LLAMA_SHAPE),  # its default sliding window (4096) never applies here
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=256),
    "qwen3": dict(model_type="qwen3", head_dim=16, **_LLAMA_SHAPE),
    "qwen3_moe": dict(model_type="qwen3_moe", head_dim=16, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=32, norm_topk_prob=True, **_LLAMA_SHAPE),
    # a window shorter than the tests' prompts, so that the sliding layers' mask matters; an untied head, or the
    # scaled input embedding dominates the last hidden state and every greedy step repeats the token it read
    "gemma2": dict(model_type="gemma2", head_dim=16, sliding_window=8, tie_word_embeddings=False, **_LLAMA_SHAPE),
    "gemma3_text": dict(model_type="gemma3_text", head_dim=16, sliding_window=8, sliding_window_pattern=2,
                        tie_word_embeddings=False, **_LLAMA_SHAPE),
    "phi3": dict(model_type="phi3", **_LLAMA_SHAPE),
    # gpt-oss's own tiny shape (tests/tiny_gptoss.py) over this vocabulary: token-level tests need no harmony
    "gpt_oss": dict(model_type="gpt_oss", **{k: v for k, v in GPTOSS.items() if not k.endswith(("_id", "vocab_size", "initializer_range"))}),
    # multi-head latent attention with keys (16 + 8) wider than values (16); layer 0 dense, layer 1 routed
    "deepseek_v3": dict(model_type="deepseek_v3", q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
                        qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
                        topk_group=1, n_shared_experts=1, moe_intermediate_size=32, first_k_dense_replace=1,
                        **{**_LLAMA_SHAPE, "num_key_value_heads": 4}),
    # a causal LM transformers runs but tailorlm does not list (store/architectures.py): import refuses it
    "opt": dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                word_embed_proj_dim=64, max_position_embeddings=256),
}

ARCHS = ("llama", "qwen2", "gpt2")  # the families tests run over; mistral is llama's shape with a sliding window


def make_tiny_model(arch: str, path: Path, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                    **fields: object) -> Path:
    """Build a random model of `arch` and save it (safetensors) under `path`; `fields` change config fields
    (e.g. sliding_window=16, head_dim=64, rope_parameters=...)."""
    spec = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.2,
                **_CONFIGS[arch])
    spec.update(fields)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(path)
    return path


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_tokenizer(path: Path, vocab: int = VOCAB) -> Path:
    """A byte-level BPE tokenizer that fits the tiny models' vocabulary, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["The capital of France is Paris. Hello world, how are you today?"] * 20
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>")
    fast.chat_template = CHATML
    fast.save_pretrained(path)
    return path


def make_tiny_adapter(base: Path, path: Path, *, seed: int = 0, **lora: object) -> Path:
    """A random PEFT LoRA adapter over the model in `base`, saved as `save_pretrained` writes it.

    `init_lora_weights=False` makes B non-zero, so the adapter changes the output; `lora` are LoraConfig fields.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(init_lora_weights=False, **lora))
    model.save_pretrained(path)
    return path
