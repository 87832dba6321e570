"""Preference tuning: OpenAI's preference-pair format checked line by line, the DPO loss against a direct
computation, and DPO training on a tiny random model (it moves the held-out preference; stop and resume is exact)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tailorlm.chat import TextTokenizer, load_tokenizer
from tailorlm.errors import InvalidRequestError
from tailorlm.tune import check_file
from tailorlm.tune.data import require_method
from tailorlm.tune.dpo import DPO, encode_pair, reference, score_pairs
from tailorlm.tune.metrics import read_metrics
from tailorlm.tune.trainer import TrainHooks, Trainer, TrainSpec
from tests.test_tune_train import tiny  # noqa: F401  (the same tiny Llama with a chat template)

# The tiny random model gives BAD ~11 nats more than GOOD after these prompts: a preference DPO has to turn round.
GOOD, BAD = "Hello.", "Paris."


def pair(question: str, good: str = GOOD, bad: str = BAD, **extra: Any) -> dict[str, Any]:
    return {"input": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": good}],
            "non_preferred_output": [{"role": "assistant", "content": bad}], **extra}


def pairs(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [pair(f"Hello {i}?") for i in range(start, start + n)]


def write(path: Path, *lines: Any) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tiny) -> TextTokenizer:
    return load_tokenizer(tiny)


# -- the format ----------------------------------------------------------------------------------
def test_a_valid_preference_file(tmp_path, tok):
    report = check_file(write(tmp_path / "p.jsonl", *pairs(12)), tok, 256)
    assert report.ok and report.format == "preference" and not report.problems
    encoded = [encode_pair(tok, p) for p in pairs(12)]
    assert report.stats.total_tokens == sum(map(len, encoded))  # both sides of every pair
    assert report.stats.trainable_tokens == sum(p.trained_tokens for p in encoded)
    one = encoded[0]
    # each side is the input rendered as serving renders it, then the answer: the same prompt, the answer trained
    prompt = len(one.chosen) - one.chosen.trained_tokens
    assert one.chosen.ids[:prompt] == one.rejected.ids[:prompt] and not any(one.chosen.trained[:prompt])
    assert tok.decode([t for t, m in zip(one.chosen.ids, one.chosen.trained) if m]).startswith(GOOD)


def test_every_problem_names_its_line_and_field(tmp_path, tok):
    good = pair("Hi?")
    lines = [
        good,
        {k: v for k, v in good.items() if k != "non_preferred_output"},  # 2
        {**good, "preferred_output": "Hello"},  # 3
        {**good, "preferred_output": [{"role": "user", "content": "Hello"}]},  # 4
        {**good, "non_preferred_output": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {**good, "input": {"messages": []}},  # 6
        {**good, "input": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}},
        {**good, "input": {"prompt": "Hi"}},  # 8
        {**good, "input": {"messages": [{"role": "robot", "content": "Hi"}]}},  # 9
        {**good, "non_preferred_output": good["preferred_output"]},  # 10
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},  # 11
        {**good, "preferred_output": [{"role": "assistant", "content": " "}]},  # 12
    ]
    report = check_file(write(tmp_path / "p.jsonl", *lines), tok, 256)
    assert [(p.line, p.message) for p in report.errors] == [
        (2, "non_preferred_output is missing"),
        (3, "preferred_output must be an array of one assistant message (got a string)"),
        (4, "preferred_output[0].role must be 'assistant' (got 'user')"),
        (5, "non_preferred_output must be an array of one assistant message (got 2 messages)"),
        (6, "input.messages is empty"),
        (7, "input.messages[1] is an assistant message: the input ends where the answer starts (a user or tool "
            "message)"),
        (8, "input.messages is missing"),
        (9, "input.messages[0] has unknown role 'robot'; expected one of system, developer, user, assistant, tool"),
        (10, "preferred_output and non_preferred_output are the same answer: the pair prefers nothing"),
        (11, "mixed formats: this line is chat but the file is preference pairs (from line 1)"),
        (12, "preferred_output[0] has empty content"),
    ]
    # the API's check (no tokenizer: structure only) finds the same, and a dpo job refuses the file on the first
    structure = check_file(tmp_path / "p.jsonl", None, None)
    assert [(p.line, p.message) for p in structure.errors] == [(p.line, p.message) for p in report.errors]
    with pytest.raises(InvalidRequestError, match=r"^training_file f line 2: non_preferred_output is missing "
                                                  r"\(10 more errors"):
        require_method(structure, "dpo", "training_file", "f")


def test_the_method_decides_which_files_fit(tmp_path, tok):
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    chats = check_file(write(tmp_path / "c.jsonl", *[chat] * 3), None, None)
    prefs = check_file(write(tmp_path / "p.jsonl", *pairs(3)), None, None)
    require_method(chats, "supervised", "training_file", "c")
    require_method(prefs, "dpo", "training_file", "p")
    with pytest.raises(InvalidRequestError, match="holds chat examples .*, not preference pairs"):
        require_method(chats, "dpo", "training_file", "c")
    with pytest.raises(InvalidRequestError, match='holds preference pairs .*method {"type": "dpo"}'):
        require_method(prefs, "supervised", "training_file", "p")
    too_long = check_file(write(tmp_path / "l.jsonl", pair("q, z; " * 200)), tok, 256)
    assert too_long.errors[0].message.startswith("too long: ")


def test_cli_data_check_names_line_and_field(tmp_path, tiny):
    from tailorlm.store import ModelStore

    home = tmp_path / "home"
    ModelStore(home).import_path(tiny, name="tiny", show_progress=False)
    bad = write(tmp_path / "bad.jsonl", *pairs(2), {k: v for k, v in pair("x").items() if k != "non_preferred_output"},
                *pairs(9, 10))
    env = {**os.environ, "TAILOR_HOME": str(home), "COLUMNS": "200"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "tailorlm", "data", "check", *a, "--model", "tiny"],
                                    capture_output=True, text=True, timeout=120, env=env)
    done = run(str(bad))
    assert done.returncode == 1, done.stderr
    assert "│    3 │ error    │ non_preferred_output is missing" in done.stdout
    assert "preference pairs (for method dpo)" in done.stdout and "12: 11 valid, 1 invalid" in done.stdout
    done = run(str(write(tmp_path / "good.jsonl", *pairs(10))), "--method", "supervised", "--json")
    out = json.loads(done.stdout)
    assert done.returncode == 1 and out["format"] == "preference"
    assert out["problems"][0]["message"].startswith("the file holds preference pairs")


# -- the loss ------------------------------------------------------------------------------------
@torch.no_grad()
def _answer_logp(model, seq) -> float:
    """Σ log p(token) over the trained tokens of one sequence, by a plain full forward."""
    ids = torch.tensor([seq.ids])
    logps = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(float(logps[t, seq.ids[t + 1]]) for t in range(len(seq) - 1) if seq.trained[t + 1])


def test_dpo_loss_equals_its_definition(tiny, tok):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float64)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False)).double()  # non-zero: policy != reference
    batch = [encode_pair(tok, p) for p in [pair("Hi?"), pair("Where?", "Paris.", "Hello world."), pair("Who?")]]
    beta = 0.3
    expected = []
    for p in batch:
        pc, pr = _answer_logp(model, p.chosen), _answer_logp(model, p.rejected)
        with model.disable_adapter():
            rc, rr = _answer_logp(model, p.chosen), _answer_logp(model, p.rejected)
        expected.append(-F.logsigmoid(torch.tensor(beta * ((pc - rc) - (pr - rr)), dtype=torch.float64)).item())
    result = DPO(beta).backward(model, batch, max_micro_tokens=60)  # micro-batches of whole pairs
    assert result.loss == pytest.approx(sum(expected) / len(expected), rel=1e-9)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)  # the base (the reference) never moves
    with reference(model):
        assert all(not p.requires_grad or p.grad is not None for p in model.parameters())


# -- training ------------------------------------------------------------------------------------
def _spec(tiny: Path, **kw) -> TrainSpec:
    return TrainSpec(**{"base_path": tiny, "method": "lora", "epochs": 3, "batch_size": 4, "learning_rate": 2e-3,
                        "seed": 5, "lora_rank": 4, **kw})


def _preference(model, held) -> tuple[float, float]:
    margins = score_pairs(model, held, 1024).margins
    return float((margins > 0).float().mean()), float(margins.mean())


def test_dpo_moves_the_held_out_preference(tiny, tok, tmp_path):
    train = [encode_pair(tok, p) for p in pairs(16)]
    held = [encode_pair(tok, p) for p in [pair(f"Good morning {i}, anything new?") for i in range(8)]]
    out = Trainer(_spec(tiny, learning_rate=5e-3), train, held, tmp_path / "run", objective=DPO(0.1)).run()
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    steps = [r for r in rows if r["train_loss"] is not None]
    assert steps[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6)  # LoRA starts at zero: policy == base
    assert steps[0]["train_reward_margin"] == 0 and steps[-1]["train_loss"] < 0.5 * math.log(2)
    assert steps[-1]["train_reward_accuracy"] == 1.0
    valid = [r for r in rows if r["valid_loss"] is not None]
    assert len(valid) == 3 and valid[-1]["valid_reward_accuracy"] == 1.0
    tuned = _preference(out.model, held)
    with reference(out.model):
        base = _preference(out.model, held)
    # measured: held-out win rate 0% -> 100%, mean margin -11.1 -> +4.0 nats
    assert base[0] == 0.0 and tuned[0] == 1.0, (base, tuned)
    assert base[1] < -5 and tuned[1] > 0


def test_dpo_stop_and_resume_equals_an_uninterrupted_run(tiny, tok, tmp_path):
    train = [encode_pair(tok, p) for p in pairs(12)]
    held = [encode_pair(tok, p) for p in pairs(4, 100)]
    full = Trainer(_spec(tiny, epochs=2), train, held, tmp_path / "full", objective=DPO(0.2)).run()
    stops = iter([False] * 4 + [True])
    first = Trainer(_spec(tiny, epochs=2), train, held, tmp_path / "split", objective=DPO(0.2),
                    hooks=TrainHooks(should_stop=lambda: next(stops, False))).run()
    assert not first.finished and first.progress.step == 4
    second = Trainer(_spec(tiny, epochs=2), train, held, tmp_path / "split", objective=DPO(0.2)).run()
    assert second.finished
    a, b = (dict(m.named_parameters()) for m in (full.model, second.model))
    assert all(torch.equal(a[k], b[k]) for k, p in a.items() if p.requires_grad)
    keys = ("step", "train_loss", "train_reward_margin", "valid_loss", "learning_rate")
    rows = [read_metrics(tmp_path / run / "metrics.csv") for run in ("full", "split")]
    assert [[r[k] for k in keys] for r in rows[0]] == [[r[k] for k in keys] for r in rows[1]]


# -- the CLI: a file of pairs makes a DPO job; killed, it resumes from its checkpoint -----------------
def test_cli_tune_on_pairs_resumes_after_kill(tiny, tmp_path):
    import sqlite3

    from tailorlm.store import ModelStore
    from tests.test_tune_train import _env, _tune_cmd, kill_at_first_checkpoint

    home = tmp_path / "home"
    ModelStore(home).import_path(tiny, name="tiny", show_progress=False)
    broken = write(tmp_path / "broken.jsonl", *pairs(2), {k: v for k, v in pair("x").items() if k != "input"})
    done = subprocess.run(_tune_cmd("tiny", "--data", str(broken)), env=_env(home), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and f"error: --data {broken} line 3: input is missing" in done.stderr
    data = write(tmp_path / "pairs.jsonl", *pairs(120))
    args = ["tiny", "--data", str(data), "--epochs", "1", "--batch-size", "1", "--beta", "0.2", "--seed", "3",
            "--lora-rank", "4", "--suffix", "pairs"]
    job_dir = kill_at_first_checkpoint(home, *args)
    assert json.loads((job_dir / "config.json").read_text())["method"] == "dpo"
    killed_at = len(read_metrics(job_dir / "metrics.csv"))
    assert 0 < killed_at < 120, "the job was killed mid-run"
    done = subprocess.run(_tune_cmd("--resume", job_dir.name), env=_env(home), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == f"ft:tiny:pairs:{job_dir.name}"
    rows = read_metrics(job_dir / "metrics.csv")
    assert [r["step"] for r in rows] == list(range(1, 121))  # no step lost or repeated
    with sqlite3.connect(home / "tailor.db") as db:
        messages = [m for (m,) in db.execute("SELECT message FROM fine_tuning_events WHERE job_id = ?", (job_dir.name,))]
    resumed = [m for m in messages if m.startswith("Resuming from step")]
    assert resumed and "dpo (beta 0.2)" in resumed[0] and int(resumed[0].split()[3].rstrip(":")) <= killed_at


def test_cli_pause_then_resume_in_the_foreground(tiny, tmp_path, monkeypatch):
    """`tailor tune --pause JOB` pauses a job wherever it is; `--resume` then trains it here to the end."""
    from typer.testing import CliRunner

    from tailorlm.cli import _register, app
    from tailorlm.config import get_settings
    from tailorlm.db import connect
    from tailorlm.files import FileStore
    from tailorlm.store import ModelStore
    from tailorlm.tune.jobs import DPOHyperparameters, JobStore

    _register()  # every verb, as `tailor` has them (with `tune` alone, typer would make it the whole app)
    home = tmp_path / "home"
    monkeypatch.setenv("TAILOR_HOME", str(home))
    get_settings.cache_clear()
    settings = get_settings()
    ModelStore(home).import_path(tiny, name="tiny", show_progress=False)
    jobs = JobStore(connect(settings.db_path))
    data = FileStore(jobs.conn, settings.files_dir, settings.max_upload_bytes).add_path(
        write(tmp_path / "pairs.jsonl", *pairs(8)))
    job = jobs.create("tiny", data.id, hyperparameters=DPOHyperparameters(n_epochs=1, batch_size=4, lora_rank=4),
                      method="dpo")
    done = CliRunner().invoke(app, ["tune", "--pause", job.id])
    assert done.exit_code == 0 and f"job {job.id}: paused" in done.output
    assert jobs.get(job.id).status == "paused"
    done = CliRunner().invoke(app, ["tune", "--resume", job.id])
    assert done.exit_code == 0, done.output
    finished = jobs.get(job.id)
    assert finished.status == "succeeded" and done.stdout.strip().endswith(finished.fine_tuned_model)
    assert CliRunner().invoke(app, ["tune", "--pause", job.id]).exit_code == 1  # a finished job cannot be paused
