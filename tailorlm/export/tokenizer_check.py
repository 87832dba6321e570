"""The tokenizer half of the parity gate: an artifact must carry exactly its source's vocabulary, special
tokens, EOS and chat template. For GGUF the check reads the file's own metadata (what llama.cpp will use);
for the other formats, the tokenizer files stored beside the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tailorlm.chat.tokenizer import generation_eos_ids


def _eos(folder: Path) -> set[int]:
    return set(generation_eos_ids(folder))


def _load(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)


def tokenizer_problems(source: Path, artifact: Path, fmt: str) -> list[str]:
    """What differs between the tokenizer of the model folder `source` and the artifact stored in `artifact`."""
    src = _load(source)
    if fmt == "gguf":
        return _gguf_problems(src, _eos(source), artifact / "model.gguf")
    art = _load(artifact)
    problems = []
    if (src.chat_template or None) != (art.chat_template or None):
        problems.append("the chat template differs from the source's")
    if src.get_vocab() != art.get_vocab():
        problems.append(f"the vocabulary differs from the source's ({len(art)} vs {len(src)} tokens)")
    for role in ("bos", "eos", "pad", "unk"):
        if getattr(src, f"{role}_token_id") != getattr(art, f"{role}_token_id"):
            problems.append(f"the {role.upper()} token differs from the source's "
                            f"({getattr(art, f'{role}_token')!r} vs {getattr(src, f'{role}_token')!r})")
    if sorted(src.all_special_tokens) != sorted(art.all_special_tokens):
        problems.append("the special tokens differ from the source's")
    if _eos(source) != _eos(artifact):
        problems.append(f"the EOS ids differ from the source's ({sorted(_eos(artifact))} vs "
                        f"{sorted(_eos(source))})")
    return problems


def _gguf_problems(src: Any, source_eos: set[int], path: Path) -> list[str]:
    import gguf

    fields = gguf.GGUFReader(str(path)).fields

    def get(key: str) -> Any:
        return fields[key].contents() if key in fields else None

    problems = []
    if (src.chat_template or None) != (get(gguf.Keys.Tokenizer.CHAT_TEMPLATE) or None):
        problems.append("the chat template in the GGUF metadata differs from the source's")
    tokens = get(gguf.Keys.Tokenizer.LIST) or []
    by_id = src.convert_ids_to_tokens(list(range(len(src))))
    if len(tokens) < len(by_id) or tokens[:len(by_id)] != by_id:
        first = next((i for i, (a, b) in enumerate(zip(tokens, by_id)) if a != b), min(len(tokens), len(by_id)))
        problems.append(f"the GGUF vocabulary differs from the source's from token {first} on "
                        f"({len(tokens)} vs {len(by_id)} tokens)")
    eos = get(gguf.Keys.Tokenizer.EOS_ID)
    if eos is None or (eos != src.eos_token_id and eos not in source_eos):
        problems.append(f"the GGUF's EOS token ({eos}) is not the source's ({src.eos_token_id})")
    bos = get(gguf.Keys.Tokenizer.BOS_ID)
    if src.bos_token_id is not None and bos != src.bos_token_id:
        problems.append(f"the GGUF's BOS token ({bos}) is not the source's ({src.bos_token_id})")
    return problems
