"""Write a tiny HF llama as an unquantized GGUF file, the way llama.cpp's converter lays it out."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (byte-level BPE)."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp interleaves the rotary halves of q/k rows; transformers undoes this on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model_dir: Path, path: Path, *, license: str = "mit") -> Path:
    """Convert the tiny llama saved in `model_dir` to an F32 GGUF at `path`, with a byte-level tokenizer."""
    import gguf

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    c = model.config
    vocab = c.vocab_size
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("Tiny Llama")
    writer.add_license(license)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_vocab_size(vocab)
    tokens = ["<pad>", "<s>", "</s>", *_byte_alphabet(), "he", "ll"]
    tokens += [f"<extra_{i}>" for i in range(vocab - len(tokens))]
    types = [3, 3, 3] + [1] * 258 + [4] * (vocab - 261)  # 3 control, 1 normal, 4 user-defined
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["h e", "l l"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for key, tensor in model.state_dict().items():
        if key.endswith("q_proj.weight"):
            tensor = _permute(tensor, c.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            tensor = _permute(tensor, c.num_key_value_heads)
        writer.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), tensor.detach().float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
