"""Data-parallel training for real: the job process launched as two processes by torch's own
launcher (`torch.distributed.run`, which `accelerate launch` runs for a MULTI_GPU config such as
the Kubernetes Job's; on CPUs accelerate only starts one process, or several through MPI), gloo on
this CPU, against the same job in one process. Two processes must take exactly the steps one takes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures.tiny_model import TINY_MODEL_ID
from tuneloop.nats_server import free_port

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = "adapter_model.safetensors"


def _examples(count: int, seed: int) -> list[dict]:
    """Chats of a few lengths, so batches are length-grouped and shares are uneven."""
    rng = random.Random(seed)
    chats = []
    for _ in range(count):
        n = rng.randint(0, 999)
        filler = " please" * rng.randint(0, 6)
        chats.append({"messages": [{"role": "user", "content": f"Is {n} even?{filler}"},
                                   {"role": "assistant", "content": "yes" if n % 2 == 0 else "no"}]})
    return chats


def _job(tmp_path: Path, name: str, **method) -> Path:
    """A job spec (as the supervisor or the Kubernetes ConfigMap hands it over) in its own dir."""
    root = tmp_path / name
    root.mkdir()
    for split, (count, seed) in {"train": (23, 0), "validation": (6, 1)}.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in _examples(count, seed)))
    spec = {
        "job_id": f"ftjob-{name}", "base_model": TINY_MODEL_ID, "seed": 5,
        "train_path": str(root / "train.jsonl"), "validation_path": str(root / "validation.jsonl"),
        # 23 examples in batches of 4: the last batch (3) splits 2 + 1 between the processes.
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 20.0},
        # No dropout: its masks are the one thing two processes draw differently from one.
        "method": {"type": "supervised", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                   "early_stopping_patience": 0, "replay_fraction": 0.0, **method},
        "job_dir": str(root / "job"), "adapter_dir": str(root / "adapter"),
    }
    path = root / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _env(tmp_path: Path, model_dir: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "TUNELOOP_DATA_DIR": str(tmp_path / "data"),
            "TUNELOOP_BASE_MODELS": json.dumps({TINY_MODEL_ID: str(model_dir)}), "OMP_NUM_THREADS": "1",
            # float32: bf16 rounds two halves of a batch differently from the whole, and AdamW turns
            # such differences of near-zero gradients into whole steps; float32 sums agree to 1e-6.
            "TUNELOOP_TRAINING_BF16": "false"}


def _run(command: list[str], env: dict[str, str]) -> list[dict]:
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _job_process(spec: Path) -> list[str]:
    return ["-m", "services.training.job_process", "--spec", str(spec)]


def _two_processes(spec: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *_job_process(spec)]


def test_two_processes_train_the_adapter_one_process_would_and_report_once(tmp_path, learning_model_dir):
    env = _env(tmp_path, learning_model_dir)
    one = _run([sys.executable, *_job_process(_job(tmp_path, "one"))], env)
    two = _run(_two_processes(_job(tmp_path, "two")), env)
    assert any(e["event"] == "message" and "data parallel: 2 processes" in e["message"] for e in two)

    # One report for the job, however many processes trained it.
    assert [e["event"] for e in two if e["event"] != "message"] == [e["event"] for e in one if e["event"] != "message"]
    assert [e["event"] for e in two].count("completed") == 1
    steps = {name: [e for e in events if e["event"] == "step"] for name, events in (("one", one), ("two", two))}
    assert len(steps["two"]) == len(steps["one"]) == 2 * 6  # ceil(23 / 4) steps an epoch
    for single, shared in zip(steps["one"], steps["two"], strict=True):
        # The batch's loss is summed over both shares: the same number one process computes.
        assert shared["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)
        assert shared["train_mean_token_accuracy"] == pytest.approx(single["train_mean_token_accuracy"], abs=1e-6)
    assert steps["one"][-1]["train_loss"] < steps["one"][0]["train_loss"]  # it did learn
    done = {name: next(e for e in events if e["event"] == "completed") for name, events in (("one", one), ("two", two))}
    assert done["two"]["trained_tokens"] == done["one"]["trained_tokens"]
    assert done["two"]["metrics"]["full_valid_loss"] == pytest.approx(done["one"]["metrics"]["full_valid_loss"], rel=1e-4)

    # The same weights, step for step; written once, by the first process.
    single, shared = (load_file(str(tmp_path / name / "adapter" / ADAPTER)) for name in ("one", "two"))
    assert single.keys() == shared.keys()
    start = load_file(str(tmp_path / "one" / "job" / "checkpoints" / "epoch-1" / ADAPTER))
    for name, tensor in single.items():
        # Float32 sums in another order differ in the last bits, and AdamW's step (about the
        # learning rate, whatever the gradient's size) can turn that into a visible difference on a
        # weight whose gradient is near zero; nearly every weight agrees to the last bits.
        same = torch.isclose(shared[name], tensor, rtol=1e-4, atol=1e-6).float().mean().item()
        assert same > 0.98 and (shared[name] - tensor).abs().max() < 5e-4, (name, same)
    assert any(not torch.equal(start[name], single[name]) for name in single)  # epoch 2 moved them again
    assert sorted(p.name for p in (tmp_path / "two" / "job" / "checkpoints").iterdir()) == ["epoch-1", "epoch-2"]


def test_a_failure_in_one_process_fails_the_whole_job_with_the_first_processs_report(tmp_path, learning_model_dir):
    spec = _job(tmp_path, "bad", lora_r=4)
    broken = json.loads(spec.read_text())
    broken["train_path"] = str(tmp_path / "missing.jsonl")
    spec.write_text(json.dumps(broken))
    done = subprocess.run(_two_processes(spec), env=_env(tmp_path, learning_model_dir), cwd=ROOT,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["event"] for r in reports if r["event"] != "message"] == ["failed"]
    assert "missing.jsonl" in reports[-1]["message"]
