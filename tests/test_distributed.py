"""Data parallel training with torchrun: 2 CPU processes (gloo) follow the same loss curve as one process
with the same global batch."""

import json
import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--vocab_size=300", "--tokenizer_chars=20000",
        "--max_steps=6", "--eval_interval=3", "--eval_batches=1", "--log_interval=1", "--device=cpu"]


def curve(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["train_loss"] for r in rows if "train_loss" in r], [r["val_loss"] for r in rows if "val_loss" in r]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    r = subprocess.run([sys.executable, "train_pretrain.py", f"--out_dir={one}", "--batch_size=8", *TINY],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train_pretrain.py", f"--out_dir={two}", "--batch_size=4", *TINY],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    train_one, val_one = curve(one)
    train_two, val_two = curve(two)
    assert len(train_one) == len(train_two) == 6
    assert max(abs(a - b) for a, b in zip(train_one, train_two)) < 1e-4
    assert max(abs(a - b) for a, b in zip(val_one, val_two)) < 1e-4
    assert train_one[0] != train_one[-1]        # it did train
