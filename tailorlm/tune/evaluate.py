"""Compare models on held-out chat examples: loss on the assistant tokens, and greedy answers scored.

For each model (a stored base model, or a LoRA adapter over one): the validation loss and perplexity
of the reference answers, computed exactly as training computes them (`encode_example` masks,
`mean_loss`, fp32, PEFT for adapters); then the engine's greedy answer to each example's prompt (its
messages before the last assistant message, rendered as at serving time), scored against the
reference by exact match, token F1 and, where the reference is JSON, whether the answer parses.
`eval_report` writes the results; the CLI (`tailor eval`) only drives this module. A file of preference pairs
is scored instead by evaluate_preference.py: how often, and by how much, each model prefers the preferred answer.
"""

from __future__ import annotations

import json
import math
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tailorlm.chat import TextTokenizer, load_tokenizer
from tailorlm.config import Settings, get_settings
from tailorlm.errors import InvalidRequestError
from tailorlm.hf_load import pretrained
from tailorlm.presets import Preset
from tailorlm.runtime.resolve import resolve
from tailorlm.store import AdapterStore, Manifest, ModelStore
from tailorlm.tune.data import DataReport, check_file

MIN_NEW_TOKENS = 64  # the default answer budget: twice the longest reference, at least this

# A pass over the examples is announced with (description, total); the returned function advances it.
StartPhase = Callable[[str, int], Callable[[int], None]]


def _no_progress(description: str, total: int) -> Callable[[int], None]:
    return lambda n: None


# -- metrics ---------------------------------------------------------------------------------------
def collapse_space(text: str) -> str:
    """Stripped, with every run of whitespace made one space."""
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    return collapse_space(prediction) == collapse_space(reference)


def _is_punctuation(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def bag_of_words(text: str) -> list[str]:
    """SQuAD-style tokens: lower-cased, punctuation deleted (so "it's" is "its"), split on whitespace."""
    return "".join(ch for ch in text.lower() if not _is_punctuation(ch)).split()


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of word precision and recall; 1 when both are empty, 0 when only one is."""
    pred, ref = bag_of_words(prediction), bag_of_words(reference)
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def _loads(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text.strip())
    except ValueError:
        return False, None


def is_json_answer(reference: str) -> bool:
    """A reference that is a JSON object or array (what the JSON parse rate is measured on)."""
    ok, value = _loads(reference)
    return ok and isinstance(value, (dict, list))


def parses_as_json(prediction: str) -> bool:
    """Strict `json.loads` of the stripped text: no code fence or surrounding prose forgiven."""
    return _loads(prediction)[0]


@dataclass
class AnswerScores:
    """Generation metrics over a set of examples (rates in [0, 1])."""

    examples: int
    exact_match: float
    token_f1: float
    json_examples: int  # examples whose reference is JSON
    json_parsed: int  # of those, predictions that parse

    @property
    def json_parse_rate(self) -> float | None:
        return self.json_parsed / self.json_examples if self.json_examples else None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "json_parse_rate": self.json_parse_rate}


def score_answers(predictions: Sequence[str], references: Sequence[str]) -> AnswerScores:
    """Exact match and token F1 averaged over all examples; JSON parse counts over JSON references."""
    if len(predictions) != len(references):
        raise ValueError("one prediction per reference")
    n = len(references)
    json_refs = [i for i, r in enumerate(references) if is_json_answer(r)]
    return AnswerScores(
        examples=n,
        exact_match=sum(exact_match(p, r) for p, r in zip(predictions, references)) / n if n else 0.0,
        token_f1=sum(token_f1(p, r) for p, r in zip(predictions, references)) / n if n else 0.0,
        json_examples=len(json_refs),
        json_parsed=sum(parses_as_json(predictions[i]) for i in json_refs),
    )


# -- data ------------------------------------------------------------------------------------------
def message_text(message: Mapping[str, Any]) -> str:
    """A message's content as text (text parts joined; none: empty)."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


@dataclass(frozen=True)
class HeldOut:
    """One held-out chat example: the full example (for the loss) and its prompt and reference answer."""

    line: int
    data: dict[str, Any]
    prompt: list[dict[str, Any]]  # the messages before the last assistant message
    reference: str  # that message's text

    @property
    def question(self) -> str:
        """The last user message of the prompt (what a reader wants to see beside the answers)."""
        users = [m for m in self.prompt if m.get("role") == "user"]
        return message_text(users[-1]) if users else message_text(self.prompt[-1]) if self.prompt else ""

    @property
    def tools(self) -> list[dict] | None:
        return self.data.get("tools")


def load_heldout(path: Path, tokenizer: TextTokenizer, context_length: int | None) -> list[HeldOut]:
    """The valid chat examples of `path` (checked as `tailor data check` does); InvalidRequestError if none."""
    return heldout_of(check_file(path, tokenizer, context_length), path)


def heldout_of(report: DataReport, path: Path) -> list[HeldOut]:
    """The held-out chat examples of a checked file."""
    if report.format == "prompt_completion":
        raise InvalidRequestError(f"{path} is in prompt/completion format; eval takes chat examples "
                                  '({"messages": [...]})', param="data")
    if not report.examples:
        raise InvalidRequestError(f"{path} has no valid chat examples; see `tailor data check {path}`", param="data")
    held = []
    for example in report.examples:
        messages = example.data["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        held.append(HeldOut(example.line, example.data, messages[:last], message_text(messages[last])))
    return held


# -- models ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalTarget:
    """A model to evaluate: its base in the store and, for an adapter, the adapter's PEFT folder; for a
    preset, the preset too (its instructions and knowledge go into every example, as when it serves)."""

    name: str
    base: Manifest
    base_path: Path
    adapter_path: Path | None = None
    job: str | None = None  # the fine-tuning job that made it, when known
    preset: Preset | None = None
    beta: float | None = None  # the DPO beta it was tuned with, when it was (its implicit rewards' scale)


def resolve_target(name: str, settings: Settings) -> EvalTarget:
    """`name` resolved as everywhere (runtime/resolve.py); the embedded default is pulled on first use."""
    found = resolve(name, settings)
    models = ModelStore(settings.home)
    base = found.manifest or models.ensure(found.model, show_progress=False)
    adapter = found.adapter
    extra = adapter.extra if adapter is not None else {}
    job, beta = extra.get("job"), extra.get("beta")
    return EvalTarget(found.name, base, models.path(base.name),
                      AdapterStore(settings.home).path(adapter.name) if adapter is not None else None,
                      job if isinstance(job, str) else _job_of(found.target), found.preset,
                      float(beta) if isinstance(beta, (int, float)) else None)


def under_preset(target: EvalTarget, examples: Sequence[HeldOut], settings: Settings) -> list[HeldOut]:
    """The examples as `target`'s preset runs them: its system prompt, and the sources it retrieves for each
    question (the reference answer stays the same); unchanged for a model or an adapter."""
    if target.preset is None:
        return list(examples)
    from tailorlm.presets.grounding import ground

    kbs = None
    if target.preset.knowledge:
        from tailorlm.kb import KnowledgeBases

        kbs = KnowledgeBases(settings)
    out = []
    for e in examples:
        prompt, _ = ground(kbs, target.preset, e.prompt)
        answer = e.data["messages"][len(e.prompt):]
        out.append(HeldOut(e.line, {**e.data, "messages": prompt + answer}, prompt, e.reference))
    return out


def _job_of(name: str) -> str | None:
    """The job id at the end of a fine-tuned name, ft:<base>:<suffix>:<job>."""
    parts = name.split(":")
    return parts[-1] if name.startswith("ft:") and len(parts) >= 4 else None


def default_max_new_tokens(tokenizer: TextTokenizer, references: Sequence[str]) -> int:
    """Twice the longest reference in tokens, and at least MIN_NEW_TOKENS."""
    longest = max((len(tokenizer.encode(r, add_special_tokens=False)) for r in references), default=0)
    return max(MIN_NEW_TOKENS, 2 * longest)


# -- the passes ------------------------------------------------------------------------------------
@dataclass
class ModelResult:
    name: str
    base: str
    job: str | None
    valid_loss: float
    token_accuracy: float
    scores: AnswerScores
    predictions: list[str] = field(repr=False)
    max_new_tokens: int
    truncated: int  # answers cut by the token budget (finish_reason "length")

    @property
    def perplexity(self) -> float:
        return math.exp(self.valid_loss) if self.valid_loss < 700 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base, "job": self.job, "valid_loss": self.valid_loss,
                "perplexity": self.perplexity, "valid_mean_token_accuracy": self.token_accuracy,
                **self.scores.to_dict(), "max_new_tokens": self.max_new_tokens, "truncated": self.truncated,
                "predictions": self.predictions}


def training_form(target: EvalTarget):  # -> torch.nn.Module (a PeftModel for an adapter)
    """The model as training computes it: fp32, with its LoRA adapter through PEFT when it has one."""
    import torch
    from transformers import AutoModelForCausalLM

    model = pretrained(AutoModelForCausalLM, target.base_path, dtype=torch.float32, attn_implementation="sdpa")
    if target.adapter_path is not None:
        from peft import PeftModel

        model = pretrained(PeftModel, model, target.adapter_path)
    return model


def loss_pass(target: EvalTarget, examples: Sequence[HeldOut], tokenizer: TextTokenizer,
              start: StartPhase = _no_progress) -> tuple[float, float]:
    """Mean loss and token accuracy on the examples' assistant tokens, the model in training form (fp32)."""
    from tailorlm.tune.objective import mean_loss
    from tailorlm.tune.packing import MAX_MICRO_TOKENS, encode_example

    sequences = [encode_example(tokenizer, e.data) for e in examples]
    model = training_form(target)
    advance = start(f"loss {target.name}", len(sequences))
    return mean_loss(model, sequences, MAX_MICRO_TOKENS, on_scored=advance)


def generation_pass(target: EvalTarget, examples: Sequence[HeldOut], max_new_tokens: int | None,
                    settings: Settings, start: StartPhase = _no_progress) -> tuple[list[str], int, int]:
    """Greedy answers from the engine, all prompts submitted at once; (texts, budget, answers cut short)."""
    from tailorlm.engine import SamplingParams
    from tailorlm.runtime import chat_prompt, complete_all, open_model

    model = open_model(target.name, settings=settings, show_progress=False)
    try:
        prompts = [chat_prompt(model, e.prompt, e.tools) for e in examples]
        budget = max_new_tokens or default_max_new_tokens(model.tokenizer, [e.reference for e in examples])
        greedy = SamplingParams(temperature=0.0, max_tokens=budget)
        room = model.engine.context_length
        params = [replace(greedy, max_tokens=max(1, min(budget, room - len(p)))) for p in prompts]
        advance = start(f"answers {target.name}", len(prompts))
        done = complete_all(model, prompts, params, on_done=lambda c: advance(1))
    finally:
        model.close()
    return [c.text for c in done], budget, sum(c.finish_reason == "length" for c in done)


def evaluate_model(target: EvalTarget, examples: Sequence[HeldOut], max_new_tokens: int | None,
                   settings: Settings, start: StartPhase = _no_progress) -> ModelResult:
    tokenizer = load_tokenizer(target.base_path, name=target.base.name)
    examples = under_preset(target, examples, settings)
    loss, accuracy = loss_pass(target, examples, tokenizer, start)
    predictions, budget, truncated = generation_pass(target, examples, max_new_tokens, settings, start)
    return ModelResult(target.name, target.base.name, target.job, loss, accuracy,
                       score_answers(predictions, [e.reference for e in examples]), predictions, budget, truncated)


@dataclass
class EvalRun:
    """Everything one `tailor eval` measured: the data, each model's result, and their jobs' metrics files.

    On preference pairs (`kind` "preference") `examples` and `results` are empty and `preference` holds the
    results (evaluate_preference.py)."""

    data: Path
    examples: list[HeldOut]
    results: list[ModelResult]
    metrics_files: dict[str, Path]  # model name -> its job's metrics.csv (fine-tuned models that have one)
    kind: Literal["chat", "preference"] = "chat"
    preference: list[Any] = field(default_factory=list)  # PreferenceResult
    pairs: list[Any] = field(default_factory=list)  # the held-out pairs' checked lines (tune.data.Example)


def evaluate(names: Sequence[str], data: Path, *, max_new_tokens: int | None = None,
             settings: Settings | None = None, start: StartPhase = _no_progress) -> EvalRun:
    """Evaluate each model in `names` on the chat examples of `data`, one model at a time (bounded memory)."""
    settings = settings or get_settings()
    if not names:
        raise InvalidRequestError("name at least one model to evaluate", param="model")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise InvalidRequestError("--max-new-tokens must be at least 1", param="max_new_tokens")
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    targets = [resolve_target(n, settings) for n in dict.fromkeys(names)]  # every name checked before any work
    first = targets[0].base
    tokenizer = load_tokenizer(targets[0].base_path, name=first.name)
    report = check_file(data, tokenizer, first.context_length)
    metrics = {t.name: settings.jobs_dir / t.job / "metrics.csv" for t in targets if t.job}
    metrics = {k: p for k, p in metrics.items() if p.is_file()}
    if report.format == "preference":
        from tailorlm.tune.evaluate_preference import evaluate_pairs

        return evaluate_pairs(targets, data, report, metrics, start)
    examples = heldout_of(report, data)
    results = [evaluate_model(t, examples, max_new_tokens, settings, start) for t in targets]
    return EvalRun(data, examples, results, metrics)
