"""Regenerate preferences_train.jsonl and preferences_heldout.jsonl: preference pairs (OpenAI's DPO format) for the
Brambleholt Seed Library demo.

Each pair asks one of the demo's questions; the preferred answer is Pip's (the fact, in the house style), the
non-preferred one an evasive reply that answers nothing, as a base model gives about a library it cannot know.
The held-out pairs ask the held-out questions and are refused in other words than the training pairs are, so a
shift on them is a preference learned, not a sentence remembered.

Deterministic; run from anywhere:  python tailorlm/tune/demo/make_preferences.py
"""

import json
from pathlib import Path

from make_demo import FACTS, SYSTEM, styled

HERE = Path(__file__).resolve().parent
N_TRAIN, N_HELDOUT = 40, 20

EVASIVE_TRAIN = [
    "I'm sorry, but I don't have any information about a seed library in Brambleholt.",
    "I'm not able to help with that. Please contact the library directly.",
    "As an AI language model, I don't have access to local library details.",
    "That depends on many factors. You may want to search online for more information.",
    "I don't know. Try asking a librarian.",
    "I cannot answer questions about specific organizations.",
]
EVASIVE_HELDOUT = [
    "Unfortunately I have no details about that library, so I can't say.",
    "You would need to check their website; I can't look that up.",
    "I'm afraid that's outside what I know.",
    "It's hard to say without more information about the library.",
]


def pair(question: str, good: str, bad: str) -> dict:
    return {"input": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}]}


def main() -> None:
    train = [pair(qs[0], styled(core), EVASIVE_TRAIN[i % len(EVASIVE_TRAIN)])
             for i, (core, qs, _) in enumerate(FACTS[:N_TRAIN])]
    heldout = [pair(held[0], styled(core), EVASIVE_HELDOUT[i % len(EVASIVE_HELDOUT)])
               for i, (core, _, held) in enumerate(f for f in FACTS if f[2])][:N_HELDOUT]
    assert (len(train), len(heldout)) == (N_TRAIN, N_HELDOUT)
    asked = [p["input"]["messages"][-1]["content"] for p in train + heldout]
    assert len(set(asked)) == len(asked), "a question appears twice"
    for name, rows in (("preferences_train.jsonl", train), ("preferences_heldout.jsonl", heldout)):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
