"""The batching of minigpt/serving.py seen from inside: a request is answered as soon as its own rows end (not
when the batch's longest does), and a client that disconnects mid-stream frees its rows at once. The server
runs in this process over a tiny model slowed to 20 ms a step that never ends an answer by itself, so every
answer runs to its max_tokens and the order of events is not a race."""

import http.client
import json
import threading
import time

import pytest
import torch

import serve
from minigpt.model import GPT, GPTConfig
from minigpt.serving import STATS, Served
from minigpt.tokenizer import Tokenizer

from conftest import TEXT

STEP_S = 0.02


class SlowGPT(GPT):
    """A tiny random GPT that takes STEP_S per forward pass and never samples end-of-text."""

    eos_id = None

    def forward(self, *args, **kwargs):
        time.sleep(STEP_S)
        logits = super().forward(*args, **kwargs)
        logits[..., self.eos_id] = float("-inf")
        return logits


@pytest.fixture(scope="module")
def slow_server():
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(TEXT, 300)
    model = SlowGPT(GPTConfig(block_size=96, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16))
    model.eos_id = tokenizer.eos_id
    cfg = serve.Config(batch_wait_ms=200)
    served = {"slow": Served("slow", "(in memory)", model.eval(), tokenizer, None, cfg.max_batch,
                             cfg.batch_wait_ms)}
    server = serve.Server(("127.0.0.1", 0), serve.make_handler(served, cfg))
    served["slow"].thread.start()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def ask(port, max_tokens, stream=False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = {"model": "slow", "messages": [{"role": "user", "content": "Add 3 and 4."}],
            "max_tokens": max_tokens, "stream": stream}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def wait_for(condition, seconds=10):
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_a_short_request_does_not_wait_for_the_long_one_in_its_batch(slow_server):
    calls = STATS["generate_calls"]
    answers, start = {}, threading.Barrier(2)

    def run(name, max_tokens):
        start.wait()
        conn, r = ask(slow_server, max_tokens)
        answers[name] = (json.loads(r.read()), set(answers))   # the answer, and who had answered before it
        conn.close()

    threads = [threading.Thread(target=run, args=("long", 50)),
               threading.Thread(target=run, args=("short", 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert STATS["generate_calls"] == calls + 1                      # one batch for both
    assert answers["short"][1] == set() and answers["long"][1] == {"short"}  # the short one came back first
    assert answers["short"][0]["usage"]["completion_tokens"] == 3
    assert answers["long"][0]["usage"]["completion_tokens"] == 50
    assert answers["long"][0]["choices"][0]["finish_reason"] == "length"


def test_a_client_that_disconnects_mid_stream_frees_its_rows(slow_server):
    steps, cancelled = STATS["decode_steps"], STATS["cancelled"]
    conn, r = ask(slow_server, 50, stream=True)
    for line in r:                                  # read until the first token's chunk, then hang up
        if line.startswith(b"data: ") and b'"content": ""' not in line:
            break
    r.close()
    conn.close()
    wait_for(lambda: STATS["cancelled"] == cancelled + 1)
    assert STATS["decode_steps"] - steps < 25          # far fewer than the 50 it asked for
    conn, r = ask(slow_server, 2)                            # and the server answers the next one
    assert json.loads(r.read())["usage"]["completion_tokens"] == 2
    conn.close()
