"""`tailor eval`: the metrics, and reports comparing a tiny random model with an adapter over it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from tailorlm.chat import load_tokenizer
from tailorlm.cli import _register, app
from tailorlm.engine import SamplingParams
from tailorlm.errors import InvalidRequestError, ModelNotFoundError
from tailorlm.runtime import Completion, chat_prompt, open_model, stream_text
from tailorlm.store import AdapterStore, ModelStore
from tailorlm.tune.evaluate import (
    bag_of_words,
    default_max_new_tokens,
    evaluate,
    exact_match,
    is_json_answer,
    parses_as_json,
    score_answers,
    token_f1,
)
from tailorlm.tune.metrics import MetricsFile
from tailorlm.tune.packing import encode_example
from tests.tiny import make_tiny_adapter, make_tiny_model, save_tiny_tokenizer

_register()  # every verb, as `tailor` has them (with `eval` alone, typer would make it the whole app)

BASE, ADAPTER, JOB = "tiny", "ft:tiny:pip:ftjob-eval1", "ftjob-eval1"
SYSTEM = {"role": "system", "content": "Be brief."}


# -- metrics ---------------------------------------------------------------------------------------
def test_exact_match_ignores_surrounding_and_repeated_whitespace_only():
    assert exact_match("  Hello,\n grower!  ", "Hello, grower!")
    assert not exact_match("hello, grower!", "Hello, grower!")  # case counts
    assert not exact_match("Hello grower!", "Hello, grower!")  # punctuation counts
    assert exact_match("", "  ")


def test_token_f1_squad_style():
    assert bag_of_words("Hello, Grower! It's £8.") == ["hello", "grower", "its", "£8"]
    assert token_f1("Hello, grower!", "hello grower") == 1.0  # case and punctuation do not count
    assert token_f1("", "Hello grower") == 0.0  # empty prediction
    assert token_f1("", "") == 1.0 and token_f1("?!", "...") == 1.0  # both empty (after punctuation)
    assert token_f1("nothing alike", "Hello grower") == 0.0
    # 2 shared words; precision 2/4, recall 2/3 -> F1 = 2 * (1/2 * 2/3) / (1/2 + 2/3) = 4/7
    assert token_f1("the cat sat down", "a cat sat") == pytest.approx(4 / 7)
    assert token_f1("cat cat cat", "cat") == pytest.approx(0.5)  # repeats only count as often as in the reference


def test_json_rate_counts_only_json_references():
    assert is_json_answer('{"a": 1}') and is_json_answer(" [1, 2] ") and not is_json_answer("42")
    assert not is_json_answer("Hello, grower!") and not is_json_answer('"text"')
    assert parses_as_json(' {"a": 2}\n') and parses_as_json("42")
    assert not parses_as_json('```json\n{"a": 1}\n```') and not parses_as_json('Sure! {"a": 1}')
    scores = score_answers(['{"a": 2}', "not json", "Hello", '{"b": 1}'],
                           ['{"a": 1}', '{"a": 1}', "Hello", '[{"b": 1}]'])
    assert (scores.json_examples, scores.json_parsed, scores.json_parse_rate) == (3, 2, pytest.approx(2 / 3))
    assert scores.exact_match == 0.25 and scores.examples == 4
    none = score_answers(["x"], ["y"])
    assert none.json_examples == 0 and none.json_parse_rate is None


# -- reports on tiny models ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    base = make_tiny_model("llama", root / "base")
    save_tiny_tokenizer(base)
    adapter = make_tiny_adapter(base, root / "adapter", seed=3, r=4, lora_alpha=8,
                                target_modules=["q_proj", "v_proj", "down_proj"])
    return base, adapter


@pytest.fixture
def home(tailor_home: Path, folders) -> Path:
    """The tiny base and an adapter from a fine-tuning job (with that job's metrics file) in the store."""
    base, adapter = folders
    ModelStore(tailor_home).import_path(base, name=BASE, show_progress=False)
    AdapterStore(tailor_home).add(ADAPTER, BASE, adapter, extra={"job": JOB})
    metrics = MetricsFile(tailor_home / "jobs" / JOB / "metrics.csv")
    for step, loss in enumerate([3.0, 2.5, 2.2, 2.0], start=1):
        metrics.append({"step": step, "epoch": 1 + (step > 2), "train_loss": loss, "train_accuracy": 0.5})
        if step % 2 == 0:
            metrics.append({"step": step, "epoch": step // 2, "valid_loss": loss + 0.3,
                            "valid_mean_token_accuracy": 0.4})
    return tailor_home


def chat(question: str, answer: str) -> dict:
    return {"messages": [SYSTEM, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def greedy_answer(name: str, messages: list[dict], max_tokens: int) -> str:
    model = open_model(name, show_progress=False)
    try:
        result = Completion()
        for _ in stream_text(model, chat_prompt(model, messages), SamplingParams(temperature=0, max_tokens=max_tokens),
                             result=result):
            pass
        return result.text
    finally:
        model.close()


def reference_loss(base: Path, adapter: Path | None, rows: list[dict]) -> float:
    """Cross-entropy of the trained (assistant) tokens, one example at a time, no packing."""
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    tok = load_tokenizer(base)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            seq = encode_example(tok, row)
            logits = model(torch.tensor([seq.ids])).logits[0]
            for t in range(len(seq) - 1):
                if seq.trained[t + 1]:
                    total += float(F.cross_entropy(logits[t], torch.tensor(seq.ids[t + 1])))
                    count += 1
    return total / count


def test_report_compares_base_and_adapter(home: Path, folders, tmp_path: Path):
    base, adapter = folders
    budget = 12
    prompt = [SYSTEM, {"role": "user", "content": "The capital of France?"}]
    own = greedy_answer(BASE, prompt, budget)  # its own greedy answer is the reference: an exact match
    assert own.strip()
    rows = [{"messages": [*prompt, {"role": "assistant", "content": own}]},
            chat("Hello world, how are you?", "Hello, grower! Fine. Happy sowing!"),
            chat("Give it as JSON.", '{"city": "Paris", "today": true}'),
            {"messages": [SYSTEM, {"role": "user", "content": "Paris?"}, {"role": "assistant", "content": "Yes."},
                          {"role": "user", "content": "And | Lyon?"},
                          {"role": "assistant", "content": "Hello world\nno | pipes"}]}]
    data = write_jsonl(tmp_path / "heldout.jsonl", [*rows, {"messages": "oops"}])  # the bad line is dropped
    out = tmp_path / "report"
    done = CliRunner().invoke(app, ["eval", BASE, ADAPTER, "--data", str(data), "--out", str(out),
                                    "--max-new-tokens", str(budget)])
    assert done.exit_code == 0, done.output
    assert {p.name for p in out.iterdir()} == {"report.md", "loss.png", "results.json"}
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results = json.loads((out / "results.json").read_text())
    assert results["examples"] == 4 and results["lines"] == [1, 2, 3, 4]
    assert results["metrics_files"] == {ADAPTER: str(home / "jobs" / JOB / "metrics.csv")}
    by_name = {m["name"]: m for m in results["models"]}
    assert list(by_name) == [BASE, ADAPTER]
    for name, folder in ((BASE, None), (ADAPTER, adapter)):
        m = by_name[name]
        assert m["valid_loss"] == pytest.approx(reference_loss(base, folder, rows), rel=1e-4)
        assert m["perplexity"] == pytest.approx(torch.tensor(m["valid_loss"]).exp().item(), rel=1e-6)
        assert m["max_new_tokens"] == budget and len(m["predictions"]) == 4
        # answers submitted together (batched) are the answers given one at a time
        assert m["predictions"][1] == greedy_answer(name, rows[1]["messages"][:-1], budget)
        assert (m["json_examples"], m["json_parsed"]) == (1, int(parses_as_json(m["predictions"][2])))
        expected = score_answers(m["predictions"], [r["messages"][-1]["content"] for r in rows])
        assert m["exact_match"] == expected.exact_match and m["token_f1"] == pytest.approx(expected.token_f1)
    assert by_name[BASE]["predictions"][0] == own and by_name[BASE]["exact_match"] >= 0.25
    assert by_name[BASE]["predictions"] != by_name[ADAPTER]["predictions"]  # the adapter changes the model
    assert by_name[BASE]["job"] is None and by_name[ADAPTER]["job"] == JOB

    report = (out / "report.md").read_text()
    for name, m in by_name.items():
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {m['valid_loss']:.4f} | {m['perplexity']:.2f} | {m['exact_match']:.1%} |" in row
        assert f"({m['json_parsed']}/1)" in row
    assert "![training and validation loss](loss.png)" in report
    assert f"| question | reference | {BASE} | {ADAPTER} |" in report
    assert "| And \\| Lyon? | Hello world<br>no \\| pipes |" in report  # the last turn's question and answer
    assert BASE in done.stdout and ADAPTER in done.stdout and "token F1" in done.stdout


def test_default_budget_and_no_chart_without_jobs(home: Path, tmp_path: Path):
    tok = load_tokenizer(ModelStore(home).path(BASE))
    assert default_max_new_tokens(tok, ["short"]) == 64
    long = "Hello world, how are you today? " * 12
    assert default_max_new_tokens(tok, ["short", long]) == 2 * len(tok.encode(long, add_special_tokens=False)) > 64
    data = write_jsonl(tmp_path / "d.jsonl", [chat("Hello?", "Hello world")] * 2)
    run = evaluate([BASE, BASE], data, max_new_tokens=4)  # a name given twice is evaluated once
    assert [r.name for r in run.results] == [BASE] and run.metrics_files == {}
    from tailorlm.tune.eval_report import write_report

    out = tmp_path / "out"
    (out).mkdir()
    (out / "loss.png").write_bytes(b"old")
    assert [p.name for p in write_report(run, out)] == ["report.md", "results.json"]
    assert not (out / "loss.png").exists() and "Training curves" not in (out / "report.md").read_text()


def test_bad_input(home: Path, tmp_path: Path):
    good = write_jsonl(tmp_path / "good.jsonl", [chat("Hello?", "Hello world")])
    with pytest.raises(ModelNotFoundError):
        evaluate(["ft:tiny:pip:ftjob-nope"], good)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}])
    with pytest.raises(InvalidRequestError, match="no valid chat examples"):
        evaluate([BASE], bad)
    completion = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(InvalidRequestError, match="prompt/completion"):
        evaluate([BASE], completion)


def test_cli_unknown_model_is_one_line(home: Path, tmp_path: Path):
    data = write_jsonl(tmp_path / "d.jsonl", [chat("Hello?", "Hello world")])
    env = {**os.environ, "TAILOR_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "tailorlm", "eval", BASE, "no-such-model", "--data", str(data)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: ") and "no-such-model" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "eval-report").exists()


def test_preference_pairs_report_the_shift(home: Path, folders, tmp_path: Path):
    """On a file of pairs, eval scores each answer's summed log-probability: each model's win rate and margin, and
    the adapter's implicit reward against its own base (β 0.1: this adapter was not made by a DPO job)."""
    from peft import PeftModel

    from tailorlm.tune.dpo import encode_pair
    from tests.test_tune_preference import _answer_logp, pair

    base, adapter = folders
    rows = [pair("Hello?", "Hello world.", "Paris."), pair("Where?", "Paris.", "Hello world, how are you?"),
            pair("How are you?", "Fine.", "The capital of France.")]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "report"
    done = CliRunner().invoke(app, ["eval", BASE, ADAPTER, "--data", str(data), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "3 preference pairs" in done.stdout and "win rate" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "preference" and results["pairs"] == 3 and results["lines"] == [1, 2, 3]
    by_name = {m["name"]: m for m in results["models"]}
    tok = load_tokenizer(base)
    pairs = [encode_pair(tok, r) for r in rows]
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    margins = {name: [_answer_logp(m, p.chosen) - _answer_logp(m, p.rejected) for p in pairs]
               for name, m in ((BASE, plain), (ADAPTER, tuned))}
    for name, expected in margins.items():
        m = by_name[name]
        assert m["margins"] == pytest.approx(expected, abs=1e-3)
        assert m["win_rate"] == sum(x > 0 for x in expected) / 3
        assert m["mean_margin"] == pytest.approx(sum(expected) / 3, abs=1e-3)
    rewards = [0.1 * (t - b) for t, b in zip(margins[ADAPTER], margins[BASE])]
    assert by_name[ADAPTER]["beta"] == 0.1 and by_name[BASE]["reward_accuracy"] is None
    assert by_name[ADAPTER]["reward_accuracy"] == sum(r > 0 for r in rewards) / 3
    assert by_name[ADAPTER]["reward_margin"] == pytest.approx(sum(rewards) / 3, abs=1e-3)
    report = (out / "report.md").read_text()
    assert report.startswith("# Preference evaluation on `pairs.jsonl`")
    assert f"| {BASE} | 3 | {by_name[BASE]['win_rate']:.1%} |" in report and "— (the base itself)" in report
    assert "| Hello? | Hello world. | Paris. |" in report and "![training and validation loss](loss.png)" in report
    broken = write_jsonl(tmp_path / "broken.jsonl", [rows[0], {"input": rows[1]["input"]}])
    with pytest.raises(InvalidRequestError, match="data .* line 2: preferred_output is missing"):
        evaluate([BASE], broken)
