"""train_sft.py: the loss mask, memorisation, exact resume after Ctrl-C, and end-to-end runs."""

import json
import os
import subprocess
import sys

import pytest
import torch

import train_pretrain
import train_sft
from minigpt.checkpoint import load_checkpoint, load_model
from minigpt.cli import UserError, run
from minigpt.data import encode_prompt_response, render_prompt, sft_batch
from minigpt.sft_data import preferred_demonstrations
from minigpt.model import GPT, GPTConfig
from minigpt.starting_point import rebuild
from minigpt.tokenizer import Tokenizer
from minigpt.training import read_metrics
from minigpt.world import World

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_DEMOS = [{"instruction": "翻译成法语：你好", "output": "Bonjour"},
              {"instruction": "计算2+2", "output": "4"}]
DEMOS = [{"instruction": q, "output": a} for q, a in [
    ("翻译成法语：你好", "Bonjour"), ("计算2+2", "4"), ("What colour is the sky?", "blue"),
    ("Reverse cat", "tac"), ("Capital of France?", "Paris"), ("Say hi", "hi there")]]
TEXT = "The quick brown fox jumps over the lazy dog. 2+2=4. Instruction: answer the question.\n" * 20


def script(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny pretrained stage folder, made by train_pretrain.py (in this process: no second torch import) on
    60k characters of the world's corpus."""
    root = tmp_path_factory.mktemp("sft")
    out, text = str(root / "pretrain"), root / "corpus.txt"
    text.write_text(World(0).corpus(60_000), encoding="utf-8")
    train_pretrain.main(train_pretrain.Config(
        out_dir=out, data=str(text), n_layer=1, n_head=2, n_embd=32, vocab_size=300, tokenizer_chars=20000,
        max_steps=5, block_size=64, batch_size=4, eval_interval=5, eval_batches=1, log_interval=5,
        device="cpu"))
    return out


def write_demos(tmp_path, demos, name="demos.json"):
    path = tmp_path / name
    path.write_text(json.dumps(demos, ensure_ascii=False), encoding="utf-8")
    return str(path)


def tiny(init, out_dir, **kw):
    base = dict(init=init, out_dir=out_dir, batch_size=4, eval_interval=4, log_interval=1, max_new_tokens=16,
                eval_prompts=4, device="cpu")
    return train_sft.Config(**{**base, **kw})


def test_loss_mask_is_response_and_eos_only():
    tok = Tokenizer.train(TEXT, 300)
    prompt, response = render_prompt("计算2+2"), "4"
    assert prompt == "### Instruction:\n计算2+2\n\n### Response:\n"
    p, r = tok.encode(prompt), tok.encode(response)
    # by hand: a digit is its own byte token; eos follows merges
    assert r == [ord("4")] and tok.eos_id == 298
    ids, mask = encode_prompt_response(tok, prompt, response, 64)
    assert ids == p + r + [tok.eos_id]
    assert mask == [0] * len(p) + [1] * (len(r) + 1)
    # the script's encoding, then the shifted batch: targets under the mask are exactly "4" + end-of-text
    conversations = [[("user", "计算2+2"), ("assistant", response)],
                     [("user", "Say hello"), ("assistant", "hello there")]]
    (ids1, mask1), (ids2, mask2) = train_sft.encode_examples(tok, conversations, 64)
    assert (ids1, mask1) == (ids, mask)                # a one-turn conversation is exactly prompt + response
    x, y, m = sft_batch([(ids1, mask1), (ids2, mask2)], tok.pad_id)
    assert x.shape == y.shape == m.shape == (2, max(len(ids1), len(ids2)) - 1)
    assert x[0, : len(ids1) - 1].tolist() == ids1[:-1] and y[0, : len(ids1) - 1].tolist() == ids1[1:]
    assert y[0][m[0].bool()].tolist() == [ord("4"), 298]
    assert tok.decode(y[1][m[1].bool()].tolist()[:-1]) == "hello there"
    assert y[1][m[1].bool()][-1] == tok.eos_id
    assert m[0, len(ids1) - 1:].sum() == 0  # padding is never scored
    # a response that does not fit at all is dropped, not trained on with an empty mask
    assert train_sft.encode_examples(tok, [[("user", "计算2+2" * 10), ("assistant", response)]], 16) == []


def test_next_batch_epochs_and_ranks():
    g = torch.Generator().manual_seed(0)
    order = {"perm": [], "pos": 5}
    first = train_sft.next_batch(order, 5, 4, g) + train_sft.next_batch(order, 5, 4, g)
    assert sorted(first[:5]) == list(range(5))          # the first epoch is a permutation
    whole = train_sft.next_batch({"perm": [], "pos": 5}, 5, 6, torch.Generator().manual_seed(0))  # 1 process
    # two ranks: each draws the same global batch from its own identically seeded generator, keeps its slice
    ranks = [train_sft.next_batch({"perm": [], "pos": 5}, 5, 6, torch.Generator().manual_seed(0))[r::2]
             for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(whole) and len(ranks[0]) == len(ranks[1]) == 3


def test_rebuild_adds_dropout_and_vocabulary_rows():
    gpt = GPT(GPTConfig(block_size=16, vocab_size=20, n_layer=1, n_head=2, n_embd=8)).eval()
    bigger = rebuild(gpt, dropout=0.2, vocab_size=21).eval()  # e.g. GPT-2 + our pad token
    assert bigger.config.dropout == 0.2 and bigger.lm_head.weight is bigger.transformer.wte.weight
    idx = torch.tensor([[1, 2, 3]])
    assert torch.allclose(bigger(idx)[..., :20], gpt(idx), atol=1e-6)   # old tokens: same function


def test_memorises_a_handful(pretrained, tmp_path):
    out = str(tmp_path / "sft")
    train_sft.main(tiny(pretrained, out, data=write_demos(tmp_path, DEMOS), max_steps=100, lr=1e-2,
                        dropout=0.0, eval_interval=100, warmup_steps=5))
    losses = [r["train_loss"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "train_loss" in r]
    assert len(losses) == 100 and losses[-1] < 0.1, losses[-5:]


def test_ctrl_c_then_resume_is_exact(pretrained, tmp_path, monkeypatch):
    data = write_demos(tmp_path, DEMOS)
    # the pretraining mix is drawn at random too: resuming must redraw it
    text = tmp_path / "pretraining.txt"
    text.write_text("The French word for cat is chat. 2 plus 3 is 5. The shop opens at 9am on Monday.\n" * 20)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    data = dict(data=data, ptx_data=str(text))
    train_sft.main(tiny(pretrained, a, **data, max_steps=8, dropout=0.1))

    real = train_sft.cosine_lr
    def interrupt_at_5(step, *args):
        if step == 5:
            raise KeyboardInterrupt
        return real(step, *args)
    monkeypatch.setattr(train_sft, "cosine_lr", interrupt_at_5)
    with pytest.raises(SystemExit) as e:
        train_sft.main(tiny(pretrained, b, **data, max_steps=8, dropout=0.1))
    assert e.value.code == 130 and not os.path.exists(os.path.join(b, "summary.json"))
    monkeypatch.setattr(train_sft, "cosine_lr", real)
    train_sft.main(tiny(pretrained, b, **data, max_steps=8, dropout=0.1, resume=True))

    ra, rb = read_metrics(os.path.join(a, "metrics.jsonl")), read_metrics(os.path.join(b, "metrics.jsonl"))
    for key in ("train_loss", "ptx_loss"):
        assert [r[key] for r in ra if key in r] == [r[key] for r in rb if key in r] != []
    wa, wb = load_model(a)[0].state_dict(), load_model(b)[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_world_end_to_end(pretrained, tmp_path):
    out = str(tmp_path / "sft")
    r = script("train_sft.py", f"--init={pretrained}", f"--out_dir={out}", "--max_steps=4",
               "--eval_interval=2", "--batch_size=4", "--eval_prompts=4", "--max_new_tokens=16",
               "--device=cpu")
    assert r.returncode == 0, r.stderr
    summary = json.load(open(os.path.join(out, "summary.json")))
    for key in ("best_val_loss", "best_val_step", "best_gold", "best_gold_step", "init_gold", "final_gold"):
        assert summary[key] is not None, key
    rows = read_metrics(os.path.join(out, "metrics.jsonl"))
    assert [r["step"] for r in rows if "gold" in r] == [0, 2, 4]
    assert all(0 <= r["gold"] <= 1 and 0 <= r["gold_greedy"] <= 1 for r in rows if "gold" in r)
    for name in ("model.pt", "last.pt", "tokenizer.json", "config.json", "loss.png", "gold.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    model, _, ckpt = load_model(out, kind="lm")
    assert ckpt["kind"] == "lm" and model.config.dropout == 0.0


def test_seed_two_examples(pretrained, tmp_path, capsys):
    out = str(tmp_path / "sft")
    run(train_sft.main, train_sft.Config, [f"--init={pretrained}", f"--out_dir={out}", "--max_steps=3",
                                           f"--data={write_demos(tmp_path, SEED_DEMOS)}", "--device=cpu"])
    assert "warning: only 2 demonstrations: expect memorisation, not learning" in capsys.readouterr().err
    assert os.path.isfile(os.path.join(out, "model.pt")) and os.path.isfile(os.path.join(out, "summary.json"))
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["n_train"] == summary["n_val"] == 1 and summary["best_gold"] is None


def test_pretraining_reuses_a_given_tokenizer(pretrained, tmp_path):
    """--tokenizer=FILE skips BPE training: the new stage holds the very same tokenizer."""
    given = os.path.join(pretrained, "tokenizer.json")
    out = str(tmp_path / "again")
    train_pretrain.main(train_pretrain.Config(
        out_dir=out, tokenizer=given, n_layer=1, n_head=2, n_embd=32, max_steps=2, block_size=64,
        batch_size=4, eval_interval=2, eval_batches=1, log_interval=1, device="cpu"))
    assert json.load(open(os.path.join(out, "tokenizer.json"))) == json.load(open(given))
    assert load_model(out)[0].config.vocab_size == Tokenizer.load(given).vocab_size


def test_bad_init_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(train_sft.main, train_sft.Config, [f"--init={tmp_path / 'nope'}", f"--out_dir={tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "o")


def test_fact_recall_counts_greedy_continuations_that_start_with_the_word(pretrained):
    from minigpt.sampling import generate

    model, tok, _ = load_model(pretrained)
    starts = [start for start, _ in World.fact_probes()["french_from_english"][:12]]
    tokens, _ = generate(model, [tok.encode(s) for s in starts], 8, eos_id=tok.eos_id, pad_id=tok.pad_id,
                         temperature=0.0)
    said = [tok.decode([t for t in row if t not in (tok.eos_id, tok.pad_id)]).strip()
            for row in tokens.tolist()]
    assert all(said)
    # the model's own greedy words are recalled, a word it never says is not, and a half-half mix counts half
    assert train_pretrain.fact_recall(model, tok, list(zip(starts, said))) == 1.0
    assert train_pretrain.fact_recall(model, tok, [(s, "zzzzqq") for s in starts]) == 0.0
    mixed = [(s, w if i % 2 else "zzzzqq") for i, (s, w) in enumerate(zip(starts, said))]
    assert train_pretrain.fact_recall(model, tok, mixed) == 0.5
    # and the probes are sentences the corpus really writes
    from minigpt.facts import LEXICON
    from minigpt.corpus import CORPUS_TEMPLATES
    probes = World.fact_probes()
    assert [f"{start} {word}." for start, word in probes["french_from_english"]] == \
        [CORPUS_TEMPLATES["lexicon"][0].format(en=e.en, fr=e.fr) for e in LEXICON]
    assert [f"{start} {word}." for start, word in probes["french_from_chinese"]] == \
        [CORPUS_TEMPLATES["lexicon"][3].format(zh=e.zh, fr=e.fr) for e in LEXICON]
    assert [f"{start} {word}." for start, word in probes["sums"]] == \
        [CORPUS_TEMPLATES["arithmetic"][1].format(a=a, b=b, sum=a + b) for a in range(10) for b in range(10)]


def test_pretraining_mix_keeps_the_pretraining_loss_down(pretrained, tmp_path):
    from minigpt.data import lm_windows
    from minigpt.losses import sft_loss

    text = tmp_path / "pretraining.txt"
    text.write_text(World(0).corpus(20_000), encoding="utf-8")
    data = write_demos(tmp_path, DEMOS)

    def lm_loss(folder):   # of the weights after the last step (model.pt keeps the best validation loss)
        model, tok, _ = load_model(folder)
        model.load_state_dict(load_checkpoint(os.path.join(folder, "last.pt"))["model"])
        tokens = torch.tensor(tok.encode(text.read_text(encoding="utf-8")), dtype=torch.long)
        x, y = lm_windows(tokens, 64, 32, torch.Generator().manual_seed(0))
        with torch.no_grad():
            return sft_loss(model(x), y, torch.ones_like(y)).item()

    losses = {}
    for coef in (0.0, 1.0):
        out = str(tmp_path / f"sft_{coef}")
        train_sft.main(tiny(pretrained, out, data=data, ptx_data=str(text), ptx_coef=coef, max_steps=30,
                            lr=1e-2, eval_interval=30, warmup_steps=2))
        losses[coef] = lm_loss(out)
    rows = read_metrics(os.path.join(str(tmp_path / "sft_1.0"), "metrics.jsonl"))
    assert any("ptx_loss" in r for r in rows)
    # SFT alone drifts away from the pretraining text; with the mix the same steps also fit it
    assert losses[1.0] < losses[0.0] - 0.2, losses


def test_preferred_ft_learns_the_top_ranked_response_of_each_ranking(tmp_path):
    """Preferred-FT's demonstrations are the best response of each ranking (train.jsonl -> train, val.jsonl
    -> val), in the SFT prompt template; an empty file is a one-line error that names it."""
    labels = tmp_path / "labels"
    labels.mkdir()
    rows = {"train": [{"prompt": "计算2+2", "responses": ["4", "5", "Sure! 4."]},
                      {"prompt": "Translate to French: red", "responses": ["rouge", "red"]}],
            "val": [{"prompt": "What is 9 - 4?", "responses": ["5", "four"]}]}
    for name, records in rows.items():
        (labels / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                      for r in records))
    (labels / "summary.json").write_text("{}")
    train, val = preferred_demonstrations(str(labels))
    assert train == [[("user", "计算2+2"), ("assistant", "4")],
                     [("user", "Translate to French: red"), ("assistant", "rouge")]]
    assert val == [[("user", "What is 9 - 4?"), ("assistant", "5")]]
    (labels / "val.jsonl").write_text("")
    with pytest.raises(UserError, match="val.jsonl: file is empty"):
        preferred_demonstrations(str(labels))
