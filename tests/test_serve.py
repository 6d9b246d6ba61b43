"""serve.py, the OpenAI-compatible server: the official openai client against it (plain, streamed, logprobs,
models), every kind of bad request answered with a 4xx in OpenAI's error shape, and concurrent requests
batched. The stage folders are tiny random models written directly (no pipeline run), served by a subprocess
(the tiny_server fixture of tests/conftest.py)."""

import json
import threading
import urllib.error
import urllib.request

import pytest

from conftest import request_json

openai = pytest.importorskip("openai")

BLOCK = 96   # the tiny models' context: tests/conftest.py builds them and starts the server


@pytest.fixture(scope="module")
def server(tiny_server):
    return tiny_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=30)


def post(url, body, headers=None):
    """POST raw bytes (or a dict as JSON) to the chat endpoint -> (status, parsed JSON body)."""
    return request_json(url + "/v1/chat/completions", body, headers, timeout=30)


def health(url):
    return request_json(url + "/health", timeout=10)[1]


ASK = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 3 and 4."}]


def test_models_list(client):
    assert [m.id for m in client.models.list()] == ["sft", "ppo"]           # pipeline order, not alphabetical


def test_stage_folders_are_named_and_ordered_as_the_pipeline_reports_them(tmp_path):
    import serve

    for name in ("zoo", "grpo", "rm", "dpo", "ppo_ptx", "sft", "pretrain", "preferred_ft", "ppo", "labels"):
        (tmp_path / name).mkdir()
        if name != "labels":                                                # no model.pt: not a model
            (tmp_path / name / "model.pt").write_bytes(b"")
    found = serve.find_stage_folders(str(tmp_path))
    assert list(found) == ["pretrained", "sft", "ppo", "ppo_ptx", "dpo", "preferred_ft", "grpo", "rm", "zoo"]
    assert found["pretrained"] == str(tmp_path / "pretrain")


def test_completion_stream_and_seed(client):
    kw = dict(model="ppo", messages=ASK, max_tokens=10, temperature=1.0, seed=7)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    choice = a.choices[0]
    assert a.object == "chat.completion" and a.model == "ppo"
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= a.usage.completion_tokens <= 10
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    assert b.choices[0].message.content == choice.message.content    # the seed makes sampling deterministic
    assert isinstance(choice.model_extra["minigpt"]["reward"], float)  # our field: the reward model's score

    stream = client.chat.completions.create(**kw, stream=True)
    deltas, finish = [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        for c in chunk.choices:
            deltas.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(deltas) == choice.message.content
    assert finish == choice.finish_reason


def test_finish_reason_length_and_greedy(client):
    kw = dict(model="sft", messages=ASK, max_tokens=1, temperature=0)
    a = client.chat.completions.create(**kw)
    assert a.usage.completion_tokens <= 1
    assert a.choices[0].finish_reason == ("length" if a.usage.completion_tokens == 1 else "stop")
    assert client.chat.completions.create(**kw).choices[0].message.content == a.choices[0].message.content


def test_top_p_and_seed_inside_a_busy_batch(server, client):
    """A seeded request answers the same alone and while other requests are batched around it."""
    kw = dict(model="sft", messages=ASK, max_tokens=8, temperature=0.9, top_p=0.8, seed=11)
    alone = client.chat.completions.create(**kw).choices[0].message.content
    body = {"model": "sft", "messages": ASK, "max_tokens": 8, "temperature": 0.9, "top_p": 0.8}
    others = [threading.Thread(target=post, args=(server, body)) for _ in range(4)]
    for t in others:
        t.start()
    busy = client.chat.completions.create(**kw).choices[0].message.content
    for t in others:
        t.join(60)
    assert busy == alone


def test_logprobs_and_n(client):
    r = client.chat.completions.create(model="sft", messages=ASK, max_tokens=6, logprobs=True, top_logprobs=3,
                                       n=2, seed=1)
    assert len(r.choices) == 2
    total = 0
    for c in r.choices:
        content = c.logprobs.content
        total += len(content)
        for t in content:
            assert t.logprob <= 0 and isinstance(t.token, str) and isinstance(t.bytes, list)
            assert len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.logprob - 1e-5
    assert total == r.usage.completion_tokens


BAD = [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2]", "JSON object"),
    ({"model": "ppo"}, "messages"),
    ({"model": "ppo", "messages": []}, "messages"),
    ({"model": "ppo", "messages": [{"role": "system", "content": "hi"}]}, "user message"),
    ({"model": "ppo", "messages": ASK + [{"role": "assistant", "content": "7"}]}, "last message"),
    ({"model": "ppo", "messages": [{"role": "tool", "content": "7"}] + ASK}, "messages[0].role"),
    ({"model": "gpt-4", "messages": ASK}, "sft, ppo"),
    ({"messages": ASK}, "model"),
    ({"model": "ppo", "messages": ASK, "max_tokens": 0}, "max_tokens"),
    ({"model": "ppo", "messages": ASK, "max_tokens": BLOCK}, "context"),
    ({"model": "ppo", "messages": ASK, "max_tokens": "ten"}, "integer"),
    ({"model": "ppo", "messages": ASK, "temperature": -0.5}, "temperature"),
    ({"model": "ppo", "messages": ASK, "top_p": 0}, "top_p"),
    ({"model": "ppo", "messages": ASK, "top_p": 1.5}, "top_p"),
    ({"model": "ppo", "messages": ASK, "n": 9}, "'n'"),
    ({"model": "ppo", "messages": [{"role": "user", "content": "cat " * 400}]}, "context"),
    (b'{"model": "ppo", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "JSON"),
    (b"x" * ((1 << 20) + 1), "limit"),
]


@pytest.mark.parametrize("body,words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, body, words):
    status, answer = post(server, body)
    assert 400 <= status < 500, answer
    err = answer["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert words in err["message"], err["message"]
    assert health(server)["status"] == "ok"


def test_unknown_path_is_404(server):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server + "/nothing/here", timeout=10)
    assert e.value.code == 404 and "error" in json.loads(e.value.read())


def test_the_ranking_tab_is_off_without_a_label_file(server):
    off = "the ranking tab is off: start serve.py with --label_file=PATH"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server + "/rank/history", timeout=10)
    assert e.value.code == 404 and json.loads(e.value.read())["error"]["message"] == off
    req = urllib.request.Request(server + "/rank/submit", data=b'{"id": "x", "ranking": []}',
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 404 and json.loads(e.value.read())["error"]["message"] == off


def test_concurrent_requests_are_batched(server):
    before = health(server)["generate_calls"]
    results = [None] * 16
    start = threading.Barrier(16)

    def ask(i):
        start.wait()
        results[i] = post(server, {"model": "ppo",
                                   "messages": [{"role": "user", "content": f"Add {i} and 4."}],
                                   "max_tokens": 4 + i % 5, "temperature": 0.8})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None and r[0] == 200 for r in results), results
    for i, (_, r) in enumerate(results):
        assert r["usage"]["completion_tokens"] <= 4 + i % 5
    calls = health(server)["generate_calls"] - before
    assert 1 <= calls < 16


def test_streamed_choices_equal_the_plain_ones_for_the_same_seed(client):
    kw = dict(model="ppo", messages=ASK, max_tokens=12, temperature=1.2, seed=3, n=3, logprobs=True)
    plain = client.chat.completions.create(**kw)
    texts, lps, finish, rewards = [""] * 3, [[] for _ in range(3)], [None] * 3, [None] * 3
    for chunk in client.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            lps[c.index] += [t.logprob for t in c.logprobs.content] if c.logprobs else []
            if c.finish_reason:
                finish[c.index], rewards[c.index] = c.finish_reason, c.model_extra["minigpt"]["reward"]
    for i, c in enumerate(plain.choices):
        assert texts[i] == c.message.content and finish[i] == c.finish_reason
        assert lps[i] == [t.logprob for t in c.logprobs.content]
        assert rewards[i] == c.model_extra["minigpt"]["reward"]


def test_a_conversation_with_the_openai_client(client):
    """Three turns, each reply appended before the next question: the prompt is the whole conversation (its
    exact length, as the chat template renders it), and the oldest turn is dropped once it no longer fits."""
    from conftest import TEXT
    from minigpt.data import fit_conversation
    from minigpt.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(TEXT, 300)                           # the tiny models' tokenizer, again
    messages = [{"role": "system", "content": "Be brief."}]
    dropped = []
    for question in ("Hi", "Add", "cat"):
        messages.append({"role": "user", "content": question})
        r = client.chat.completions.create(model="sft", messages=messages, max_tokens=3, temperature=0,
                                           seed=1)
        reply = r.choices[0].message.content
        assert isinstance(reply, str)
        ids, n = fit_conversation(tokenizer, [(m["role"], m["content"]) for m in messages], BLOCK - 3)
        assert r.usage.prompt_tokens == len(ids)
        assert r.choices[0].model_extra["minigpt"].get("dropped_turns", 0) == n
        dropped.append(n)
        messages.append({"role": "assistant", "content": reply})
    assert dropped == [0, 0, 1]        # the second turn carries the first; the third has no room for it


def test_dropped_turns_are_reported_streamed_too(client):
    turn = [{"role": "user", "content": "Add 3 and 4."}, {"role": "assistant", "content": "the answer is 7."}]
    messages = [{"role": "developer", "content": "Be brief."}] + turn * 3 + [turn[0]]
    r = client.chat.completions.create(model="ppo", messages=messages, max_tokens=4, seed=2)
    assert r.choices[0].model_extra["minigpt"]["dropped_turns"] == 3
    assert isinstance(r.choices[0].model_extra["minigpt"]["reward"], float)
    last = None
    for chunk in client.chat.completions.create(model="ppo", messages=messages, max_tokens=4, seed=2,
                                                stream=True):
        last = chunk.choices[0] if chunk.choices and chunk.choices[0].finish_reason else last
    assert last.model_extra["minigpt"]["dropped_turns"] == 3


def test_the_last_message_and_the_roles_are_checked(server):
    for messages, param in ((ASK + [{"role": "assistant", "content": "7"}], "messages"),
                            (ASK[:1] + [{"role": "tool", "content": "7"}] + ASK[1:], "messages[1].role"),
                            ([{"role": "function", "content": "7"}] + ASK, "messages[0].role")):
        status, answer = post(server, {"model": "sft", "messages": messages})
        assert status == 400 and answer["error"]["param"] == param, answer


def test_parse_request_renders_the_whole_conversation():
    from types import SimpleNamespace

    from conftest import TEXT
    from minigpt.chat_api import parse_request
    from minigpt.data import fit_conversation, render_prompt
    from minigpt.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(TEXT, 300)
    served = {"m": SimpleNamespace(tokenizer=tokenizer, block_size=1000)}
    cfg = SimpleNamespace(max_n=8, default_max_tokens=64)

    def request(messages, **kw):
        return parse_request({"model": "m", "messages": messages, **kw}, served, cfg)[1]

    req = request([{"role": "user", "content": "Add 3 and 4."}])
    assert req.prompt == tokenizer.encode(render_prompt("Add 3 and 4.")) and req.dropped_turns == 0
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                {"role": "system", "content": "No lists."}, {"role": "user", "content": "Add 3 and 4."}]
    expected = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("system", "No lists."),
                ("user", "Add 3 and 4.")]
    req = request(messages)
    assert req.conversation == expected and req.prompt == fit_conversation(tokenizer, expected, 999)[0]
    short = fit_conversation(tokenizer, expected, len(req.prompt) - 1)
    req = request(messages, max_tokens=1000 - len(short[0]))
    assert (req.prompt, req.dropped_turns) == short and short[1] == 1
