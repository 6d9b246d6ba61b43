"""train_dpo.py: log π(y|x) of a padded batch equals the token-by-token reference, each ranking's pairs are
one batch element, the start is the reference (loss log 2, implicit rewards 0), Ctrl-C + --resume is exact,
and the script runs end to end on label.py's rankings and on a preference file."""

import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import label
import train_dpo
from minigpt.checkpoint import load_model, save_model
from minigpt.cli import run
from minigpt.data import encode_for_reward, encode_rankings
from minigpt.losses import dpo_loss
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizer import Tokenizer
from minigpt.training import read_metrics
from minigpt.world import World

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(World(0).corpus(20_000), 300)


@pytest.fixture(scope="module")
def sft(tmp_path_factory, tokenizer):
    """A tiny untrained 'SFT' stage folder."""
    folder = str(tmp_path_factory.mktemp("dpo") / "sft")
    torch.manual_seed(0)
    config = GPTConfig(block_size=64, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32)
    save_model(folder, GPT(config), tokenizer, "lm", {})
    return folder


def test_sequence_logprobs_of_a_padded_batch_match_one_at_a_time(tokenizer):
    torch.manual_seed(0)
    lm = GPT(GPTConfig(block_size=64, vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32)).eval()
    records = [{"prompt": "What is 3 + 4?", "responses": ["7", "Sure! The answer is 7.", ""]},
               {"prompt": "翻译成法语：红色", "responses": ["rouge", "Rouge. I hope this helps!"]}]
    rankings = encode_rankings(tokenizer, records, 64)
    with torch.no_grad():
        batched = train_dpo.logprobs_of(train_dpo.SequenceLogprob(lm), rankings, tokenizer.pad_id, "cpu")
    for rec, got in zip(records, batched):
        for y, lp in zip(rec["responses"], got.tolist()):
            ids, mask = encode_for_reward(tokenizer, rec["prompt"], y, 64)
            with torch.no_grad():
                logp = torch.log_softmax(lm(torch.tensor([ids]))[0].double(), -1)       # no padding at all
            expected = sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids)) if mask[t])  # y and its eos
            assert lp == pytest.approx(expected, abs=1e-4)


def test_each_rankings_pairs_are_one_batch_element():
    logps = [torch.tensor([-1.0, -2.0, -4.0]), torch.tensor([-3.0, -1.0])]
    refs = [torch.tensor([-2.0, -2.0, -2.0]), torch.tensor([-2.0, -2.0])]
    loss, accuracy, margin = train_dpo.ranking_dpo_loss(logps, refs, beta=0.5)
    per_ranking = []
    for lp, ref in zip(logps, refs):
        pairs = list(itertools.combinations(range(len(lp)), 2))
        losses = [dpo_loss(lp[[i]], lp[[j]], ref[[i]], ref[[j]], 0.5)[0].item() for i, j in pairs]
        per_ranking.append(sum(losses) / len(pairs))
    assert loss.item() == pytest.approx(sum(per_ranking) / 2)               # not the mean over all 4 pairs
    # margins r_w - r_l = 0.5 * (lp_i - lp_j) (equal references): 0.5, 1.5, 1.0 and -1.0
    assert accuracy == pytest.approx(3 / 4) and margin == pytest.approx((0.5 + 1.5 + 1.0 - 1.0) / 4)


def test_end_to_end_on_labels_starts_at_the_reference(sft, tmp_path):
    labels, out = str(tmp_path / "labels"), str(tmp_path / "dpo")
    label.main(label.Config(policy=sft, out_dir=labels, n_prompts=30, k_policy=2, k_demo=2, max_new_tokens=6))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_dpo.py"), f"--sft={sft}",
                        f"--labels={labels}", f"--out_dir={out}", "--batch_size=8", "--eval_interval=2",
                        "--log_interval=1", "--lr=1e-3", "--kl_prompts=4", "--max_new_tokens=6",
                        "--device=cpu"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    rows = read_metrics(os.path.join(out, "metrics.jsonl"))
    start = rows[0]
    assert start["step"] == 0 and start["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert start["val_margin"] == 0 and abs(start["val_kl"]) < 1e-5          # the policy IS the reference
    trained = [row["train_loss"] for row in rows if "train_loss" in row]
    assert trained[-1] < math.log(2)                                         # it learnt the training pairs
    summary = json.load(open(os.path.join(out, "summary.json")))
    for key in ("accuracy", "gold_accuracy", "spearman", "val_kl", "val_loss", "beta", "steps", "seconds"):
        assert summary[key] is not None, key
    for name in ("model.pt", "last.pt", "tokenizer.json", "config.json", "loss.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    # evaluate.py and chat.py can read it
    assert load_model(out, "lm")[2]["kind"] == "lm"


def test_ctrl_c_then_resume_is_exact(sft, tmp_path, monkeypatch, capsys):
    rows = [{"prompt": f"Name colour number {i}.", "chosen": c, "rejected": c[::-1] + " no"}
            for i, c in enumerate(["red", "green", "blue", "yellow", "purple", "orange", "black",
                                   "white"] * 2)]
    rows += [{"prompt": "计算2+2", "responses": ["4", "4.", "Sure! It is 4.", "5"]}] * 4
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tiny = dict(sft=sft, data=str(data), batch_size=4, eval_interval=3, log_interval=1, device="cpu",
                epochs=2, warmup_steps=2, lr=1e-3, kl_prompts=2, max_new_tokens=4)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train_dpo.main(train_dpo.Config(out_dir=a, **tiny))
    # the KL is measured on samples: it can read slightly below 0, and the lines say it is an estimate
    stdout = capsys.readouterr().out
    assert stdout.count("KL to SFT (sampled estimate, can dip below 0) ") == 3            # steps 3, 6 and 8
    assert "; KL to SFT (sampled estimate) " in stdout and stdout.count("KL to SFT") == 4
    real = train_dpo.cosine_lr

    def interrupt_at_4(step, *args):
        if step == 4:
            raise KeyboardInterrupt
        return real(step, *args)
    monkeypatch.setattr(train_dpo, "cosine_lr", interrupt_at_4)
    with pytest.raises(SystemExit) as e:
        train_dpo.main(train_dpo.Config(out_dir=b, **tiny))
    assert e.value.code == 130 and not os.path.exists(os.path.join(b, "summary.json"))
    monkeypatch.setattr(train_dpo, "cosine_lr", real)
    train_dpo.main(train_dpo.Config(out_dir=b, resume=True, **tiny))
    ra, rb = read_metrics(os.path.join(a, "metrics.jsonl")), read_metrics(os.path.join(b, "metrics.jsonl"))
    assert ([r["train_loss"] for r in ra if "train_loss" in r]
            == [r["train_loss"] for r in rb if "train_loss" in r])
    wa, wb = load_model(a, "lm")[0].state_dict(), load_model(b, "lm")[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    summary = json.load(open(os.path.join(a, "summary.json")))
    # 20 records: 16 distinct pairs and one ranking written 4 times, kept once
    assert summary["gold_accuracy"] is None and summary["n_train_prompts"] + summary["n_val_prompts"] == 17


def test_bad_input_is_one_line(sft, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(train_dpo.main, train_dpo.Config, [f"--labels={tmp_path}/nope", f"--out_dir={tmp_path}/dpo"])
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "chosen": "a", "rejected": "b"}\n'
                   '{"prompt": "y", "chosen": 3, "rejected": "b"}\n')
    with pytest.raises(SystemExit) as e:
        run(train_dpo.main, train_dpo.Config, [f"--sft={sft}", f"--data={bad}", f"--out_dir={tmp_path}/dpo"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"{bad}:2:" in err and "'chosen'" in err
    assert not os.path.exists(tmp_path / "dpo" / "model.pt")
    with pytest.raises(SystemExit) as e:
        run(train_dpo.main, train_dpo.Config, ["--beta=0"])
    assert e.value.code == 2 and "--beta" in capsys.readouterr().err
