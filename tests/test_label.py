"""label.py: simulated rankings are valid ranked lists; the human session, driven by keystrokes on stdin,
writes what was typed, skips, undoes, survives end of input and continues where it stopped."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import label
from minigpt.checkpoint import save_model
from minigpt.cli import UserError, run
from minigpt.data import load_comparisons
from minigpt.judge import mistakes
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizer import Tokenizer
from minigpt.world import World

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny untrained policy stage folder (its samples are gibberish, which is all labelling needs)."""
    folder = str(tmp_path_factory.mktemp("label") / "sft")
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(World(0).corpus(20_000), 300)
    model = GPT(GPTConfig(block_size=64, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32))
    save_model(folder, model, tokenizer, "lm", {})
    return folder


def read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_parse_ranking():
    assert label.parse_ranking("2 4 1 3", 4) == [1, 3, 0, 2]
    assert label.parse_ranking("2,4,1,3", 4) == [1, 3, 0, 2]
    assert label.parse_ranking("2413", 4) == [1, 3, 0, 2]
    for bad in ("2 4 1", "2 4 1 1", "0 1 2 3", "a b c d", "", "1 2 3 4 5"):
        assert label.parse_ranking(bad, 4) is None, bad


def test_val_split_is_even_and_prefix_stable():
    flags = [label.is_val(i, 0.15) for i in range(1000)]
    assert sum(flags) == 150 and sum(flags[:100]) == 15


def pretend_finished(monkeypatch, unfinished=lambda i: False):
    """An untrained policy rarely emits end-of-text; mark its samples as finished (except where
    `unfinished`)."""
    real = label.respond

    def respond(*args, **kwargs):
        out = real(*args, **kwargs)
        out.eos = [not unfinished(i) for i in range(len(out.texts))]
        return out
    monkeypatch.setattr(label, "respond", respond)


def test_unfinished_policy_samples_are_left_out(policy, monkeypatch):
    """PPO never asks the reward model about a response without end-of-text (it gets a fixed penalty), so the
    reward model must not learn one as a finished answer: such samples are not shown, decorated or reused."""
    pretend_finished(monkeypatch, unfinished=lambda i: i % 4 == 3)       # every fourth sample
    seen = {}
    real = label.respond

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.update(texts=out.texts, eos=out.eos)
        return out
    monkeypatch.setattr(label, "respond", spy)
    world = World(0)
    tasks = world.split("rm")[:6]
    cfg = label.Config(policy=policy, k_policy=4, k_decorated=4, k_other=2, k_demo=0, max_new_tokens=6)
    model, tok, _ = label.load_model(policy)
    cands = list(label.candidates(world, model, tok, tasks, cfg, torch.Generator().manual_seed(0), 6))
    finished_anywhere = {t for t, e in zip(seen["texts"], seen["eos"]) if e}
    unfinished = {t for t, e in zip(seen["texts"], seen["eos"]) if not e} - finished_anywhere
    assert unfinished
    draws = label.DRAWS_PER_SHOWN * 4
    for n, (task, cs) in enumerate(cands):
        mine = slice(n * draws, (n + 1) * draws)
        finished = label.distinct([t for t, e in zip(seen["texts"][mine], seen["eos"][mine]) if e])[:4]
        assert sorted(c["response"] for c in cs if c["source"] == "policy") == sorted(finished)
        assert all(any(f in c["response"] for f in finished) for c in cs if c["source"] == "decorated")
        assert not [c for c in cs if c["response"] in unfinished]


def test_the_labeller_is_shown_different_samples(policy, monkeypatch):
    """Twice k_policy samples are drawn per prompt; the first k_policy distinct finished ones are shown (a
    repeat, even with other surrounding spaces, is not; an unfinished sample is not)."""
    drawn = ["a", "a", "b", " b", "c", "d", "e", "f"]                    # per prompt, in sampling order
    ended = [True, True, True, True, False, True, True, True]

    def respond(model, tokenizer, instructions, *args, **kwargs):
        assert len(instructions) == 2 * len(drawn)                 # 2 prompts x DRAWS_PER_SHOWN * k_policy
        return type("Out", (), {"texts": drawn * 2, "eos": ended * 2})()
    monkeypatch.setattr(label, "respond", respond)
    world = World(0)
    model, tok, _ = label.load_model(policy)
    cfg = label.Config(policy=policy, k_policy=4, k_demo=0)
    for task, cs in label.candidates(world, model, tok, world.split("rm")[:2], cfg, torch.Generator(), 2):
        assert sorted(c["response"] for c in cs) == ["a", "b", "d", "e"]
        assert {c["source"] for c in cs} == {"policy"}


def test_simulated_writes_valid_ranked_lists(policy, tmp_path, monkeypatch, capsys):
    pretend_finished(monkeypatch)
    out = str(tmp_path / "labels")
    label.main(label.Config(policy=policy, out_dir=out, n_prompts=60, k_policy=2, k_demo=3, k_decorated=2,
                            k_other=1, max_new_tokens=6, val_fraction=0.25))
    world = World(0)
    train, val = read(os.path.join(out, "train.jsonl")), read(os.path.join(out, "val.jsonl"))
    summary = json.load(open(os.path.join(out, "summary.json")))
    # ties are dropped before ranking: K is what is asked for, the summary says how many were ranked
    stdout = capsys.readouterr().out
    mean = sum(len(r["responses"]) for r in train + val) / len(train + val)
    assert mean < 8 and stdout.startswith("labelling 60 prompts x up to K=8 responses")
    assert (f"{len(train)} train + {len(val)} val ranked lists ({mean:.2f} responses ranked on average of up "
            f"to K=8, ties dropped; {summary['dropped_all_tied']} prompts all tied)") in stdout
    assert len(train) + len(val) + summary["dropped_all_tied"] == 60 and len(val) >= 4
    assert (summary["K"] == 2 + 2 + 1 + 3 and 0 <= summary["ceiling"] <= 1
            and 0 <= summary["labeler_agreement"] <= 1)
    for r in train + val:
        assert r["labeler"] == "simulated-1337" and r["seed"] == 1337
        assert 2 <= len(r["responses"]) <= 8
        assert r["gold"] == [world.gold_score(r["prompt"], y) for y in r["responses"]]
        assert len(set(r["gold"])) == len(r["gold"])            # ties (and duplicates) dropped
        assert set(r["sources"]) <= {"demo", "policy", "decorated", "other"}
        task = world.task(r["prompt"])
        # a policy sample's mistake, as judged
        for y, m, s in zip(r["responses"], r["mistakes"], r["sources"]):
            assert (m == (mistakes(task, y) or [None])[0] or s in ("demo", "decorated")
                    or (s, m) == ("other", "off_topic"))
    # decorated responses: policy samples wrapped in a surface mistake (a preamble, a tail, the question)
    decorated = [m for r in train + val for m, s in zip(r["mistakes"], r["sources"]) if s == "decorated"]
    assert decorated and set(decorated) <= {"preamble", "rambling", "repeat_question"}
    # off-topic responses: what the policy said to a prompt of another kind
    sampled_for = {}                                        # response text -> kinds of prompt it answered
    for r in train + val:
        for y, s in zip(r["responses"], r["sources"]):
            if s == "policy":
                sampled_for.setdefault(y, set()).add(r["kind"])
    other = [(r["kind"], y) for r in train + val for y, s in zip(r["responses"], r["sources"])
             if s == "other"]
    seen = [(k, y) for k, y in other if y in sampled_for]   # (ties dropped some samples from their own list)
    assert other and seen and all(sampled_for[y] - {k} for k, y in seen)
    assert load_comparisons(os.path.join(out, "train.jsonl"))[0]["responses"] == train[0]["responses"]

    # a noise-free labeller ranks exactly by gold: the ceiling is 1
    label.main(label.Config(policy=policy, out_dir=out, n_prompts=8, k_policy=1, k_demo=3, k_decorated=0,
                            max_new_tokens=6, labeler_temperature=0))
    for r in read(os.path.join(out, "train.jsonl")) + read(os.path.join(out, "val.jsonl")):
        assert r["gold"] == sorted(r["gold"], reverse=True)
    assert json.load(open(os.path.join(out, "summary.json")))["ceiling_train"] == 1.0


def human(policy, out, keys, *extra):
    return subprocess.run([sys.executable, os.path.join(ROOT, "label.py"), "--labeler=human",
                           f"--policy={policy}", f"--out_dir={out}", "--n_prompts=8", "--k_policy=0",
                           "--k_demo=3", "--k_decorated=0", "--max_new_tokens=6", "--val_fraction=0.5",
                           *extra],
                          input=keys, capture_output=True, text=True, cwd=ROOT, timeout=60)


def shown(stdout):
    """The (instruction, [responses as displayed]) blocks in the order they were shown."""
    blocks = []
    for block in stdout.split("### Instruction:\n")[1:]:
        instruction = block.split("\n")[0]
        blocks.append((instruction, re.findall(r"^  \d+\) (.*)$", block, re.M)))
    return blocks


def displayed(response):
    return response.replace("\n", " ⏎ ") if response else "(empty response)"


def test_human_session_from_keystrokes(policy, tmp_path):
    out = str(tmp_path / "human")
    tasks = World(0).split("rm")
    # prompt 0: ranked; 1: skipped; 2: ranked, undone, ranked again; bad input twice; 3: ranked; then end of
    # input
    r = human(policy, out, "2 1 3\ns\n3 1 2\nu\n1 3 2\nx\n1 2\n2 3 1\n")
    assert r.returncode == 0, r.stderr
    blocks = shown(r.stdout)
    assert [b[0] for b in blocks] == [tasks[i].instruction for i in (0, 1, 2, 3, 2, 3, 4)]  # u re-shows 2
    assert r.stdout.count("expected a ranking of 1..3") == 2 and "undone" in r.stdout
    assert all(len(b[1]) == 3 for b in blocks)
    train, val = read(os.path.join(out, "train.jsonl")), read(os.path.join(out, "val.jsonl"))
    # val_fraction 0.5: odd prompts are held out
    assert [t["prompt"] for t in train] == [tasks[0].instruction, tasks[2].instruction]
    assert [t["prompt"] for t in val] == [tasks[3].instruction]
    for rec, block, typed in ((train[0], blocks[0], [2, 1, 3]), (train[1], blocks[4], [1, 3, 2]),
                              (val[0], blocks[5], [2, 3, 1])):
        assert [displayed(y) for y in rec["responses"]] == [block[1][k - 1] for k in typed]
        assert rec["labeler"] == "human" and len(rec["gold"]) == 3
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["complete"] is False and summary["n_train"] == 2 and summary["n_val"] == 1

    # rerun: the prompts already ranked are not shown again; the skipped one is; q stops
    r = human(policy, out, "1 2 3\nq\n")
    assert r.returncode == 0, r.stderr
    assert "continuing: 3 prompts already ranked" in r.stdout
    blocks = shown(r.stdout)
    assert [b[0] for b in blocks] == [tasks[1].instruction, tasks[4].instruction]
    val = read(os.path.join(out, "val.jsonl"))
    assert [t["prompt"] for t in val] == [tasks[3].instruction, tasks[1].instruction]
    assert [displayed(y) for y in val[1]["responses"]] == blocks[0][1]
    assert len(read(os.path.join(out, "train.jsonl"))) == 2

    # simulated labels never overwrite a person's work
    with pytest.raises(UserError, match="human labels"):
        label.main(label.Config(policy=policy, out_dir=out, n_prompts=8, k_policy=1, k_demo=2, k_decorated=0,
                                max_new_tokens=6))


def test_unfinished_last_line_is_dropped(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a", "responses": ["x", "y"]}\n{"prompt": "b", "resp', encoding="utf-8")
    assert [r["prompt"] for r in label.read_labels(str(path))] == ["a"]
    assert path.read_text(encoding="utf-8") == '{"prompt": "a", "responses": ["x", "y"]}\n'


def test_by_default_only_model_outputs_are_ranked(policy, tmp_path, monkeypatch):
    """InstructGPT's labellers ranked model outputs: the default candidates are k_policy samples at each
    temperature, no written answer, no world-built one."""
    pretend_finished(monkeypatch)
    # an untrained policy's answers are all wrong (all tied): a labeller who ranks them in the order shown
    monkeypatch.setattr(label, "SimulatedLabeler", lambda *args: label.StoredOrder())
    out = str(tmp_path / "labels")
    label.main(label.Config(policy=policy, out_dir=out, n_prompts=30, k_policy=3, temperatures="0.7,1.5",
                            max_new_tokens=6))
    records = read(os.path.join(out, "train.jsonl")) + read(os.path.join(out, "val.jsonl"))
    assert json.load(open(os.path.join(out, "summary.json")))["K"] == 6
    assert records and {s for r in records for s in r["sources"]} == {"policy"}
    assert max(len(r["responses"]) for r in records) <= 6


def test_bad_temperatures_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        run(label.main, label.Config, ["--temperatures=1.0,hot"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--temperatures: expected numbers" in err and err.count("\n") == 1
