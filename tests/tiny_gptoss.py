"""A tiny random gpt-oss (2 layers, 4 experts, hidden 64) with an o200k_harmony tokenizer, built offline.

The vocabulary is harmony's own (201088 ids), so the ids harmony renders are the ids the model reads.
The fast tokenizer is made from the o200k_base ranks that `bpe-openai` ships (merges recovered the
way transformers' TikTokenConverter does), plus harmony's special tokens at their ids.
"""

from __future__ import annotations

import atexit
import base64
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

HARMONY_VOCAB = 201088
FIRST_SPECIAL = 199998  # <|startoftext|>; ids from here on are special
# o200k_base's pre-tokenizer pattern (tiktoken's openai_public.py).
O200K_PATTERN = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])
CONFIG = dict(
    hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
    layer_types=["sliding_attention", "full_attention"], max_position_embeddings=2048,
    vocab_size=HARMONY_VOCAB, eos_token_id=200002, pad_token_id=199999, bos_token_id=199998,
    initializer_range=0.2,
    rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0, beta_slow=1.0,
                         truncate=False, original_max_position_embeddings=64),
)


def special_tokens() -> list[str]:
    """Harmony's special tokens in id order, FIRST_SPECIAL .. HARMONY_VOCAB-1."""
    from tailorlm.chat.harmony import encoding

    enc = encoding()
    by_id = {enc.encode(t, allowed_special="all")[0]: t for t in enc.special_tokens_set}
    return [by_id[i] for i in range(FIRST_SPECIAL, HARMONY_VOCAB)]


def build_tokenizer():
    """A transformers fast tokenizer equal to harmony's o200k_harmony (about 5 s: merges are recovered)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from tailorlm.chat.harmony import VOCAB_FILE, vocab_dir

    ranks: dict[bytes, int] = {}
    for line in (vocab_dir() / VOCAB_FILE).read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    table = bytes_to_unicode()
    names = {b: b.decode("latin-1").translate(table) for b in ranks}
    merges: list[tuple[int, str, str]] = []
    for token, rank in ranks.items():
        splits = [(ranks.get(token[:i]), ranks.get(token[i:]), i) for i in range(1, len(token))]
        for _, _, i in sorted(s for s in splits if s[0] is not None and s[1] is not None):
            merges.append((rank, names[token[:i]], names[token[i:]]))
    merges.sort(key=lambda m: m[0])
    bpe = models.BPE({names[b]: r for b, r in ranks.items()}, [(a, b) for _, a, b in merges],
                     fuse_unk=False, ignore_merges=True)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special_tokens()])
    assert tok.get_vocab_size() == HARMONY_VOCAB and tok.token_to_id("<|start|>") == 200006
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|return|>",
                                   pad_token="<|endoftext|>")


def make_tiny_gptoss(path: Path, *, seed: int = 0, dtype: torch.dtype = torch.float32, tokenizer: bool = True,
                     script: dict[int, dict[int, float]] | None = None) -> Path:
    """Save a tiny random gpt-oss (config.json, model.safetensors, and the tokenizer unless told not) under `path`.

    With `script` ({token: {next token: logit}}) the model is taught to follow it (see `teach`).
    """
    from transformers import AutoModelForCausalLM, GptOssConfig

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(GptOssConfig(**CONFIG), dtype=dtype)
    if script:
        teach(model, script)
    model.save_pretrained(path)
    if tokenizer:
        shutil.copytree(_tokenizer_dir(), path, dirs_exist_ok=True)
    return path


@torch.no_grad()
def teach(model, script: dict[int, dict[int, float]]) -> None:
    """Make the next token a function of the current one, so greedy decoding follows `script`.

    Every layer's output projections go to zero, so the final hidden state is the current token's
    embedding; each scripted token gets its own basis vector, and the output head gives the scripted
    successors of that token the given logits (others stay near 0). Several successors with close
    logits make a branch that a request's `logit_bias` can choose.
    """
    inner = model.model
    assert len(script) <= inner.config.hidden_size
    for layer in inner.layers:
        for t in (layer.self_attn.o_proj.weight, layer.self_attn.o_proj.bias,
                  layer.mlp.experts.down_proj, layer.mlp.experts.down_proj_bias):
            t.zero_()
    inner.norm.weight.fill_(1.0)
    scale = inner.config.hidden_size ** 0.5  # RMSNorm turns a one-hot row into scale * one-hot
    for i, (token, successors) in enumerate(script.items()):
        inner.embed_tokens.weight[token].zero_()
        inner.embed_tokens.weight[token, i] = 1.0
        for nxt, logit in successors.items():
            model.lm_head.weight[nxt, i] = logit / scale


@lru_cache(maxsize=1)
def _tokenizer_dir() -> Path:
    """The tokenizer files, built once per test process (several test modules share them)."""
    folder = Path(tempfile.mkdtemp(prefix="tiny-gptoss-tok-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    build_tokenizer().save_pretrained(folder)
    return folder
