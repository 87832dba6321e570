"""The parity gate: an exported artifact must behave like its source, or the export fails.

The source (base plus adapter, the adapter applied by the engine, not merged) greedily continues a fixed set
of golden prompts. Both the source and the artifact then score the same token sequences in one teacher-forced
pass, and we compare their next-token distributions at every continuation position: greedy top-1 agreement and
mean KL(source || artifact). Agreement is gated over the positions where the source is decisive (its best token
leads the second by at least TIE nats): at a near-tie either token is the source's greedy choice within
rounding, and counting it would fail sound exports of small models at random. Each quantization has a floor for agreement and a ceiling for KL (`THRESHOLDS`,
documented in docs/export.md). Separately, the artifact's tokenizer must match the source's exactly: vocabulary,
special tokens, EOS and chat template — a template that drifted breaks every chat without moving the numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tailorlm.engine.backend import Runner
from tailorlm.errors import TailorError

GOLDEN_CHATS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain in two sentences why the sky is blue.",
    "List three uses for a paperclip.",
    "Translate 'good morning' into Spanish and German.",
    "What is 17 multiplied by 23?",
    "Give me a short tip for learning to cook.",
    "Summarize the plot of Little Red Riding Hood in one sentence.",
]
GOLDEN_TEXTS = ["The history of the printing press begins", "def fibonacci(n):\n   "]
CONTINUATION = 24  # tokens the source generates after each golden prompt; both sides score them
TIE = 0.1  # nats: where the source's two best tokens are closer than this, either is its greedy choice


@dataclass(frozen=True)
class Threshold:
    min_top1: float  # fraction of decisive positions where the artifact's greedy token equals the source's
    max_kl: float  # mean KL(source || artifact) in nats per position


# Calibrated on SmolLM2-135M-Instruct (docs/benchmarks.md, "Export parity"): each limit leaves a margin over
# what a correct export of that precision measures, and sits far from what a broken one does.
THRESHOLDS: dict[str, Threshold] = {
    "f32": Threshold(0.99, 0.001),
    "f16": Threshold(0.97, 0.01),
    "bf16": Threshold(0.93, 0.05),
    "q8_0": Threshold(0.93, 0.05),
    "int8": Threshold(0.85, 0.10),
    "q4_0": Threshold(0.60, 0.60),
    "q4": Threshold(0.60, 0.60),  # the native dtype q4 (head int8): measured 74.3% / 0.375, as GGUF q4_0
}


class ParityError(TailorError):
    """The exported artifact does not behave like its source."""

    status = 422
    code = "export_parity_failed"


@dataclass
class ParityReport:
    quant: str
    prompts: int = 0
    positions: int = 0
    top1: float = 0.0  # over every position
    decisive: int = 0  # positions where the source's best token leads its second by at least TIE
    top1_decisive: float = 0.0  # over those: what the threshold applies to
    kl: float = 0.0
    threshold: dict[str, float] = field(default_factory=dict)
    tokenizer_problems: list[str] = field(default_factory=list)

    @property
    def numbers_pass(self) -> bool:
        t = THRESHOLDS[self.quant]
        return self.top1_decisive >= t.min_top1 and self.kl <= t.max_kl

    @property
    def passed(self) -> bool:
        return self.numbers_pass and not self.tokenizer_problems

    def summary(self) -> str:
        t = THRESHOLDS[self.quant]
        return (f"top-1 agreement {self.top1_decisive:.1%} where the source is decisive (need >= {t.min_top1:.0%}; "
                f"{self.top1:.1%} over all {self.positions} positions), mean KL {self.kl:.4f} nats "
                f"(need <= {t.max_kl}), {self.prompts} golden prompts")

    def failure(self) -> str:
        """One message saying every reason the gate failed."""
        reasons = list(self.tokenizer_problems)
        if not self.numbers_pass:
            reasons.append(f"outputs differ from the source: {self.summary()}")
        return "; ".join(reasons)

    def write(self, path: Path) -> None:
        data = {**asdict(self), "passed": self.passed}
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def golden_prompts(tokenizer: Any) -> list[list[int]]:
    """The golden prompts as token ids: chats through the model's template (if it has one), plus raw text."""
    prompts = []
    if getattr(tokenizer, "chat_template", None):
        for text in GOLDEN_CHATS:
            prompts.append([int(i) for i in tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False)])
    texts = GOLDEN_TEXTS if prompts else GOLDEN_CHATS + GOLDEN_TEXTS
    prompts += [tokenizer.encode(t, add_special_tokens=True) for t in texts]
    return prompts


def greedy(runner: Runner, prompt: list[int], steps: int, eos: set[int], adapter: str | None = None) -> list[int]:
    """The runner's greedy continuation of `prompt` in slot 0 (stops after an EOS token)."""
    out = [int(runner.prefill(0, prompt, 0, adapter=adapter)[-1].argmax())]
    while len(out) < steps and out[-1] not in eos:
        logits = runner.decode([out[-1]], [len(prompt) + len(out) - 1], [adapter])
        out.append(int(logits[0].argmax()))
    return out


def compare(source: Runner, artifact: Runner, prompts: list[list[int]], eos: set[int], quant: str, *,
            adapter: str | None = None, progress: Callable[[int, int], None] | None = None) -> ParityReport:
    """Score the source's greedy continuations of `prompts` with both runners; agreement and KL per position."""
    report = ParityReport(quant, threshold=asdict(THRESHOLDS[quant]))
    agree, agree_decisive, kl_sum = 0, 0, 0.0
    for i, prompt in enumerate(prompts):
        continuation = greedy(source, prompt, CONTINUATION, eos, adapter)
        sequence = prompt + continuation
        scored = slice(len(prompt) - 1, len(sequence) - 1)  # the positions that predict the continuation
        src = source.prefill(0, sequence, 0, all_logits=True, adapter=adapter)[scored].double()
        art = artifact.prefill(0, sequence, 0, all_logits=True)[scored].double()
        if src.shape != art.shape:
            raise ParityError(f"the artifact's vocabulary has {art.shape[-1]} tokens, the source's {src.shape[-1]}")
        log_p, log_q = torch.log_softmax(src, -1), torch.log_softmax(art, -1)
        kl_sum += float((log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0).sum())
        same = src.argmax(-1) == art.argmax(-1)
        best_two = log_p.topk(2, dim=-1).values
        decisive = (best_two[:, 0] - best_two[:, 1]) >= TIE
        agree += int(same.sum())
        agree_decisive += int((same & decisive).sum())
        report.decisive += int(decisive.sum())
        report.positions += src.shape[0]
        report.prompts += 1
        if progress:
            progress(i + 1, len(prompts))
    report.top1 = agree / max(report.positions, 1)
    report.top1_decisive = agree_decisive / max(report.decisive, 1)
    report.kl = kl_sum / max(report.positions, 1)
    return report
