"""Reliability: a run killed with SIGKILL and resumed gives exactly the losses of an uninterrupted
run, and bad input of every kind is one line on stderr, a non-zero exit, and nothing written."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_PRETRAIN = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--vocab_size=300",
                 "--tokenizer_chars=20000", "--batch_size=4", "--eval_batches=1", "--log_interval=1", "--seed=3"]


def script(name, *args, timeout=300, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=kw.pop("cwd", ROOT), env=env, **kw)


def losses(folder, key="train_loss"):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [(row["step"], row[key]) for row in map(json.loads, f) if key in row]


def kill_when(cmd, path, min_step, timeout=240):
    """Start cmd, SIGKILL it as soon as `path` (a last.pt) holds step >= min_step."""
    import torch

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                raise AssertionError("the run finished before it could be killed")
            if os.path.exists(path):
                try:
                    if torch.load(path, weights_only=True)["step"] >= min_step:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        return
                except Exception:  # caught mid-replace: try again
                    pass
            time.sleep(0.05)
        raise AssertionError("timed out waiting for a checkpoint")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_pretraining_resumes_exactly_after_sigkill(tmp_path):
    args = TINY_PRETRAIN + ["--max_steps=24", "--eval_interval=4"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    assert script("train_pretrain.py", f"--out_dir={full}", *args).returncode == 0
    kill_when([sys.executable, "train_pretrain.py", f"--out_dir={cut}", *args], os.path.join(cut, "last.pt"), 8)
    r = script("train_pretrain.py", f"--out_dir={cut}", *args, "--resume")
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    assert losses(cut) == losses(full)                      # every step, bit for bit
    assert losses(cut, "val_loss") == losses(full, "val_loss")


def test_ctrl_c_saves_a_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "train_pretrain.py", f"--out_dir={out}", *TINY_PRETRAIN,
                             "--max_steps=100000", "--eval_interval=100000"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not os.path.exists(os.path.join(out, "metrics.jsonl")) or os.path.getsize(os.path.join(out, "metrics.jsonl")) == 0:
        assert time.time() - t0 < 120 and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted: saved" in stdout and "Traceback" not in stderr
    assert os.path.exists(os.path.join(out, "last.pt"))
