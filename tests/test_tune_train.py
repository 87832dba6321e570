"""Training: loss masking, packing, determinism, checkpoints and resume (tiny random models)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from tailorlm.chat import load_tokenizer
from tailorlm.tune.metrics import read_metrics
from tailorlm.tune.packing import Sequence, encode_example, epoch_batches, pack, plan_micro_batches
from tailorlm.tune.trainer import TrainHooks, Trainer, TrainSpec, lr_at
from tailorlm.tune.loss import packed_loss
from tests.tiny import make_tiny_model, save_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model("llama", path)
    save_tiny_tokenizer(path)
    return path


def chat(i: int) -> dict:
    return {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"Hello {i}?"},
        {"role": "assistant", "content": f"Hello world {i % 7}, how are you"},
    ]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- masking -------------------------------------------------------------------------------------
def test_only_assistant_tokens_carry_loss_and_weight_zero_is_excluded(tiny):
    tok = load_tokenizer(tiny)
    seq = encode_example(tok, {"messages": [
        {"role": "user", "content": "How are you"},
        {"role": "assistant", "content": "France", "weight": 0},
        {"role": "user", "content": "The capital"},
        {"role": "assistant", "content": "Paris"},
    ]})
    trained = tok.decode([t for t, m in zip(seq.ids, seq.trained, strict=True) if m], skip_special_tokens=False)
    untrained = tok.decode([t for t, m in zip(seq.ids, seq.trained, strict=True) if not m], skip_special_tokens=False)
    assert trained.startswith("Paris<|im_end|>")  # the answer and its end-of-turn token, nothing else
    assert "France" in untrained and "How are you" in untrained and "The capital" in untrained
    assert "assistant" not in trained  # the role header is prompt, not answer


def test_prompt_completion_trains_the_completion_and_eos(tiny):
    tok = load_tokenizer(tiny)
    seq = encode_example(tok, {"prompt": "The capital of France is", "completion": " Paris"})
    trained_ids = [t for t, m in zip(seq.ids, seq.trained, strict=True) if m]
    assert tok.decode(trained_ids[:-1]) == " Paris"
    assert trained_ids[-1] in tok.eos_token_ids
    assert not any(seq.trained[: len(seq) - len(trained_ids)])


# -- packing -------------------------------------------------------------------------------------
def test_packed_loss_equals_each_example_alone(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float64)
    seqs = [Sequence(tuple(range(5, 17)), (False,) * 5 + (True,) * 7),
            Sequence(tuple(range(40, 47)), (False,) * 2 + (True,) * 5),
            Sequence(tuple(range(90, 99)), (False,) * 8 + (True,))]
    parts = packed_loss(model, pack(seqs))
    expected, count = 0.0, 0
    for s in seqs:
        ids = torch.tensor([s.ids])
        logits = model(input_ids=ids).logits[0]
        for t in range(len(s) - 1):
            if s.trained[t + 1]:
                expected += F.cross_entropy(logits[t], ids[0, t + 1], reduction="sum").item()
                count += 1
    assert parts.tokens == count == 13
    assert parts.loss_sum.item() == pytest.approx(expected, rel=1e-10)


def test_pack_layout():
    batch = pack([Sequence((1, 2, 3), (False, True, True)), Sequence((4, 5), (False, True))])
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert batch.targets.tolist() == [2, 3, -100, 5, -100]
    mask = batch.attention_mask[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    assert batch.tokens == 5 and batch.trained_tokens == 3


def test_micro_batches_keep_order_and_budget():
    seqs = [Sequence((1,) * n, (True,) * n) for n in (4, 4, 3, 9, 2)]
    groups = plan_micro_batches(seqs, max_tokens=8)
    assert [[len(s) for s in g] for g in groups] == [[4, 4], [3], [9], [2]]


def test_epoch_batches_are_a_seeded_partition():
    a = epoch_batches(23, 4, seed=7, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(23)) and all(b for b in a)
    assert a == epoch_batches(23, 4, seed=7, epoch=0)
    assert a != epoch_batches(23, 4, seed=7, epoch=1) != epoch_batches(23, 4, seed=8, epoch=0)


def test_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 1.0) for s in range(100)]
    assert lrs[0] < lrs[4] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))


# -- training ------------------------------------------------------------------------------------
def _data(tiny: Path, n: int = 24) -> list[Sequence]:
    tok = load_tokenizer(tiny)
    return [encode_example(tok, chat(i)) for i in range(n)]


def _spec(tiny: Path, **kw) -> TrainSpec:
    return TrainSpec(**{"base_path": tiny, "method": "lora", "epochs": 2, "batch_size": 4,
                        "learning_rate": 5e-3, "seed": 11, "lora_rank": 4, **kw})


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_training_learns_and_is_deterministic(tiny, tmp_path):
    data = _data(tiny)
    runs = [Trainer(_spec(tiny), data, data[:6], tmp_path / f"run{i}").run() for i in range(2)]
    rows = [read_metrics(tmp_path / f"run{i}" / "metrics.csv") for i in range(2)]
    losses = [r["train_loss"] for r in rows[0] if r["train_loss"] is not None]
    assert len(losses) == 12  # 24 examples / 4 per step * 2 epochs
    assert losses[-1] < losses[0] * 0.8
    assert [r["train_loss"] for r in rows[0]] == [r["train_loss"] for r in rows[1]]
    assert sum(r["valid_loss"] is not None for r in rows[0]) == 2  # one validation per epoch
    w0, w1 = (_weights(r.model) for r in runs)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    other = Trainer(_spec(tiny, seed=12), data, None, tmp_path / "other").run()
    assert other.final_train_loss != runs[0].final_train_loss


def test_stop_and_resume_equals_an_uninterrupted_run(tiny, tmp_path):
    data = _data(tiny)
    full = Trainer(_spec(tiny), data, data[:6], tmp_path / "full").run()
    stops = iter([False] * 5 + [True])
    first = Trainer(_spec(tiny), data, data[:6], tmp_path / "split",
                    TrainHooks(should_stop=lambda: next(stops, False))).run()
    assert not first.finished and first.progress.step == 5
    second = Trainer(_spec(tiny), data, data[:6], tmp_path / "split").run()
    assert second.finished
    w_full, w_split = _weights(full.model), _weights(second.model)
    assert all(torch.equal(w_full[k], w_split[k]) for k in w_full)
    a = read_metrics(tmp_path / "full" / "metrics.csv")
    b = read_metrics(tmp_path / "split" / "metrics.csv")
    keys = ("step", "train_loss", "valid_loss", "learning_rate")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


def test_full_fine_tuning_trains_every_weight(tiny, tmp_path):
    data = _data(tiny, 8)
    out = Trainer(_spec(tiny, method="full", epochs=1, learning_rate=1e-3), data, None, tmp_path / "w").run()
    before = AutoModelForCausalLM.from_pretrained(tiny)
    changed = [n for n, p in out.model.named_parameters() if not torch.equal(p, before.get_parameter(n))]
    assert len(changed) == len(list(before.parameters()))


# -- the CLI, killed with SIGKILL and resumed ----------------------------------------------------
def _tune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tailorlm", "tune", *args]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "TAILOR_HOME": str(home), "TAILOR_THREADS": "1"}


def kill_at_first_checkpoint(home: Path, *args: str) -> Path:
    """Run `tailor tune ARGS`, SIGKILL it once it has written a checkpoint; the job's folder."""
    proc = subprocess.Popen(_tune_cmd(*args), env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((home / "jobs").glob("*/checkpoints/step-*")):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return next((home / "jobs").iterdir())


def test_cli_tune_resumes_after_kill_to_the_same_result(tiny, tmp_path):
    from tailorlm.store import ModelStore

    rows = [chat(i) for i in range(240)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    args = ["tiny", "--data", str(train), "--epochs", "1", "--batch-size", "2", "--seed", "3", "--lora-rank", "4"]
    results = {}
    for run in ("straight", "killed"):
        home = tmp_path / run
        ModelStore(home).import_path(tiny, name="tiny", show_progress=False)
        if run == "straight":
            done = subprocess.run(_tune_cmd(*args, "--suffix", run), env=_env(home), capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr
        else:
            job_id = kill_at_first_checkpoint(home, *args, "--suffix", run).name
            steps_done = len(read_metrics(home / "jobs" / job_id / "metrics.csv"))
            assert 0 < steps_done < 120, "the job was killed mid-run"
            done = subprocess.run(_tune_cmd("--resume", job_id), env=_env(home), capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr
        name = done.stdout.strip().splitlines()[-1]
        assert name.startswith(f"ft:tiny:{run}:ftjob-")
        job_dir = next((home / "jobs").iterdir())
        results[run] = read_metrics(job_dir / "metrics.csv")
    straight, killed = results["straight"], results["killed"]
    assert [r["step"] for r in killed] == list(range(1, 121))  # no step lost or repeated
    assert killed[-1]["train_loss"] == pytest.approx(straight[-1]["train_loss"], rel=1e-5)
    assert [r["train_loss"] for r in killed] == pytest.approx([r["train_loss"] for r in straight], rel=1e-5)


# -- frozen base layers (oneDNN-packed) ------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_frozen_linear_matches_linear_forward_and_input_gradient(dtype, tol):
    from tailorlm.engine.layout import onednn_available
    from tailorlm.tune.frozen import FrozenLinear

    if not onednn_available(dtype):
        pytest.skip(f"oneDNN cannot run {dtype} here")
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80).requires_grad_(False)
    frozen = FrozenLinear(linear, dtype)
    x1 = torch.randn(3, 7, 48, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = torch.randn(3, 7, 80)
    (linear(x1) * g).sum().backward()
    (frozen(x2) * g).sum().backward()
    assert torch.allclose(frozen(x2), linear(x1), rtol=tol, atol=tol)
    assert torch.allclose(x2.grad, x1.grad, rtol=tol, atol=tol)


def test_fp32_frozen_layers_train_the_same_as_plain_peft(tiny, tmp_path, monkeypatch):
    data = _data(tiny, 8)
    plain = Trainer(_spec(tiny, epochs=1, train_dtype="float32", dtype=torch.float32), data, None, tmp_path / "a")
    outcome = plain.run()
    from tailorlm.tune.frozen import FrozenLinear

    assert any(isinstance(m, FrozenLinear) for m in outcome.model.modules())
    monkeypatch.setattr("tailorlm.tune.trainer.freeze_base_layers", lambda model, dtype: 0)  # PEFT's layers only
    reference = Trainer(_spec(tiny, epochs=1), data, None, tmp_path / "b").run()
    assert not any(isinstance(m, FrozenLinear) for m in reference.model.modules())
    assert outcome.final_train_loss == pytest.approx(reference.final_train_loss, rel=1e-4)


def test_cli_ctrl_c_stops_cleanly_keeps_a_checkpoint_and_resumes(tiny, tmp_path):
    from tailorlm.store import ModelStore
    from tailorlm.tune.checkpoint import list_steps

    home = tmp_path / "home"
    ModelStore(home).import_path(tiny, name="tiny", show_progress=False)
    train = write_jsonl(tmp_path / "train.jsonl", [chat(i) for i in range(240)])
    proc = subprocess.Popen(_tune_cmd("tiny", "--data", str(train), "--epochs", "1", "--batch-size", "2",
                                      "--lora-rank", "4", "--suffix", "ctrlc"),
                            env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((home / "jobs").glob("*/metrics.csv")):
        time.sleep(0.01)
    while time.time() < deadline and len(read_metrics(next((home / "jobs").glob("*/metrics.csv")))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "tailor tune --resume" in err and "Traceback" not in err
    job_dir = next((home / "jobs").iterdir())
    stopped_at = len(read_metrics(job_dir / "metrics.csv"))
    assert stopped_at < 120 and list_steps(job_dir / "checkpoints")[-1] == stopped_at  # checkpoint at the stop
    done = subprocess.run(_tune_cmd("--resume", job_dir.name), env=_env(home), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert [r["step"] for r in read_metrics(job_dir / "metrics.csv")] == list(range(1, 121))
