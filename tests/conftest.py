"""Shared fixtures: tiny random models for the RL tests, and serve.py in a subprocess over tiny random stage
folders (test_serve*.py)."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
import torch

from minigpt.checkpoint import save_model
from minigpt.model import GPT, GPTConfig, RewardModel
from minigpt.tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Under pytest-xdist (README's `-n auto`) the workers share the cores: each worker, and every process it
# starts, computes on one thread, so that two workers on two cores do not each wait for the other's threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
TEXT = ("Write a short answer. The cat sat on the mat. Add 3 and 4: the answer is 7. "
        "List the colours: red, green, blue. Reverse the word cat: tac. ") * 20
TINY_BLOCK = 96   # the tiny models' context


@pytest.fixture(scope="module")
def tiny():
    """A tiny random policy and reward model (block 64) with a tokenizer trained on TEXT: PPO's and GRPO's
    tests roll out and score with them."""
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(TEXT, 300)
    config = GPTConfig(block_size=64, vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32)
    policy = GPT(config).eval()
    reward_model = RewardModel(config).eval()
    with torch.no_grad():                      # a head that is not exactly zero, so scores differ by position
        reward_model.head.weight.normal_(0, 0.5)
    return SimpleNamespace(tokenizer=tokenizer, config=config, policy=policy, reward_model=reward_model)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_stages(out):
    """Two tiny random language models (sft, ppo) and a reward model (rm) as stage folders under out."""
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(TEXT, 300)
    config = GPTConfig(block_size=TINY_BLOCK, vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32)
    for name in ("sft", "ppo"):
        save_model(str(out / name), GPT(config), tokenizer, "lm")
    rm = RewardModel(config)
    with torch.no_grad():
        rm.head.weight.normal_(0, 0.5)
    save_model(str(out / "rm"), rm, tokenizer, "reward")


def request_json(url, body=None, headers=None, timeout=60):
    """GET url (body None) or POST body (bytes as they are, anything else as JSON) -> (HTTP status, the
    parsed JSON answer), an error status included."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextlib.contextmanager
def serving(out, *args):
    """serve.py over the stage folders under out (and more --key=value args) in a subprocess -> its URL."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(out / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "serve.py", f"--out_dir={out}", f"--port={port}",
                             "--batch_wait_ms=20", *args],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError("serve.py exited: " + (out / "serve.log").read_text())
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("serve.py did not come up: " + (out / "serve.log").read_text())
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    """URL of serve.py serving two tiny random language models (sft, ppo) and a reward model (rm)."""
    out = tmp_path_factory.mktemp("serve") / "out"
    write_tiny_stages(out)
    with serving(out) as url:
        yield url
