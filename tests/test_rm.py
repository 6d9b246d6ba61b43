"""train_rm.py: the reward is read at the last real token, the K-wise loss is the mean pairwise loss, the bias
centres the demonstrations at 0, Ctrl-C + --resume is exact, and the script runs end to end."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import label
import train_rm
from minigpt.checkpoint import load_model, save_model
from minigpt.cli import run
from minigpt.data import render_prompt
from minigpt.model import GPT, GPTConfig, RewardModel
from minigpt.sampling import left_pad
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
    folder = str(tmp_path_factory.mktemp("rm") / "sft")
    torch.manual_seed(0)
    config = GPTConfig(block_size=64, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32)
    save_model(folder, GPT(config), tokenizer, "lm", {})
    return folder


def tiny_rm(tokenizer, seed=0):
    """A reward model whose head is random (from_gpt zeroes it, which would make every test trivially
    pass)."""
    torch.manual_seed(seed)
    rm = RewardModel(GPTConfig(block_size=64, vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2,
                               n_embd=32))
    torch.nn.init.normal_(rm.head.weight, std=1.0)
    torch.nn.init.normal_(rm.head.bias, std=1.0)
    return rm.eval()


PROMPTS = ["翻译成法语：你好", "What is 3 + 4?", "Reverse the word cat."]
RESPONSES = ["Bonjour", "Sure! The answer is 7. I hope this helps!", "tac", "", "7", "Bonjour."]


def test_reward_read_at_last_real_token_right_and_left_padded(tokenizer):
    rm = tiny_rm(tokenizer)
    rankings = train_rm.ranked_ids(tokenizer, [{"prompt": p, "responses": RESPONSES} for p in PROMPTS], 64)
    seqs = [s for r in rankings for s in r]
    assert len({len(s) for s in seqs}) > 3 and all(s[-1] == tokenizer.eos_id for s in seqs)
    with torch.no_grad():
        alone = torch.stack([rm(torch.tensor([s]))[0, -1] for s in seqs])          # no padding at all
        right = torch.cat(train_rm.rewards_of(rm.score, rankings, tokenizer.pad_id, "cpu"))  # train_rm's path
        scorer = torch.cat(train_rm.rewards_of(train_rm.Scorer(rm), rankings, tokenizer.pad_id, "cpu"))
        idx, mask = left_pad(seqs, tokenizer.pad_id)                                 # PPO's layout
        left = rm.score(idx, mask)
        idx, mask = train_rm.right_pad(seqs, tokenizer.pad_id)
        last_column = rm(idx, attention_mask=mask)[:, -1]                            # the classic bug
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(scorer, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    assert not torch.allclose(last_column, alone, atol=1e-3)


@pytest.mark.parametrize("K", [2, 3, 4, 5, 6])
def test_kwise_loss_is_mean_of_pairwise_losses(tokenizer, K):
    rm = tiny_rm(tokenizer, seed=K)
    records = [{"prompt": PROMPTS[0], "responses": RESPONSES[:K]},     # prompts with different K in one batch
               {"prompt": PROMPTS[1], "responses": RESPONSES[-2:]},
               {"prompt": PROMPTS[2], "responses": RESPONSES[-K:]}]
    rankings = train_rm.ranked_ids(tokenizer, records, 64)
    loss, accuracy, _ = train_rm.ranking_loss(rm.score, rankings, tokenizer.pad_id, "cpu")
    per_prompt, hits, pairs = [], 0, 0
    for ranking in rankings:
        with torch.no_grad():
            r = [rm(torch.tensor([s]))[0, -1].item() for s in ranking]
        pair_losses = [-math.log(torch.sigmoid(torch.tensor(r[i] - r[j])).item())
                       for i in range(len(r)) for j in range(i + 1, len(r))]
        assert len(pair_losses) == len(r) * (len(r) - 1) // 2       # C(K, 2) pairs
        per_prompt.append(sum(pair_losses) / len(pair_losses))     # divided by C(K, 2) once
        hits += sum(r[i] > r[j] for i in range(len(r)) for j in range(i + 1, len(r)))
        pairs += len(pair_losses)
    assert loss.item() == pytest.approx(sum(per_prompt) / len(per_prompt), abs=1e-5)
    assert accuracy == pytest.approx(hits / pairs)
    loss.backward()                                                 # the loss trains the model
    assert rm.head.weight.grad is not None and rm.head.weight.grad.abs().sum() > 0


def test_demonstrations_get_mean_zero_and_std_one_in_the_same_order(tokenizer):
    rm = tiny_rm(tokenizer)
    prompts, demos = PROMPTS * 2, RESPONSES
    records = [{"prompt": p, "responses": [y]} for p, y in zip(prompts, demos)]
    rankings = train_rm.ranked_ids(tokenizer, records, 64)
    before = torch.cat(train_rm.all_rewards(rm.score, rankings, tokenizer.pad_id, "cpu"))
    shift, gain = train_rm.normalise_on_demonstrations(rm, tokenizer, prompts, demos, "cpu")
    after = torch.cat(train_rm.all_rewards(rm.score, rankings, tokenizer.pad_id, "cpu"))
    assert abs(before.mean().item()) > 0.1 and shift == pytest.approx(-before.mean().item(), abs=1e-6)
    assert gain == pytest.approx(1 / before.double().std(correction=0).item(), rel=1e-6)
    assert abs(after.mean().item()) < 1e-5 and after.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    # r' = (r - mean) / std: the order is kept
    torch.testing.assert_close(after, (before + shift) * gain, atol=1e-5, rtol=0)
    # a head that scores everything alike (train_rm's zero start) is shifted, never divided by 0
    flat = tiny_rm(tokenizer)
    torch.nn.init.zeros_(flat.head.weight)
    assert train_rm.normalise_on_demonstrations(flat, tokenizer, prompts, demos, "cpu")[1] == 1.0


def pairs_file(tmp_path):
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"] * 3
    rows = [{"prompt": f"Name colour number {i}.", "chosen": c, "rejected": c[::-1] + " no"}
            for i, c in enumerate(colours)]
    rows += [{"prompt": "计算2+2", "responses": ["4", "4.", "Sure! It is 4.", "5"]}] * 4
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_sft_loglikelihood_matches_token_by_token_reference(tokenizer):
    torch.manual_seed(0)
    lm = GPT(GPTConfig(block_size=128, vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2,
                       n_embd=32)).eval()
    records = [{"prompt": PROMPTS[0], "responses": RESPONSES[:4]},
               {"prompt": PROMPTS[1], "responses": RESPONSES[3:]}]
    got = train_rm.sft_loglikelihoods(lm, tokenizer, records, "cpu")
    for rec, lls in zip(records, got):
        for y, ll in zip(rec["responses"], lls):
            # slow: feed the prompt, then each response token (and the eos) one at a time
            ids = tokenizer.encode(render_prompt(rec["prompt"]))
            want = 0.0
            for t in tokenizer.encode(y) + [tokenizer.eos_id]:
                with torch.no_grad():
                    want += torch.log_softmax(lm(torch.tensor([ids]))[0, -1].double(), -1)[t].item()
                ids = ids + [t]
            assert ll.item() == pytest.approx(want, abs=1e-4)


def test_report_counts_on_policy_pairs_only_between_two_policy_samples():
    records = [{"prompt": "p", "responses": ["a", "b", "c", "d"], "gold": [1.0, 0.5, 0.2, 0.0],
                "mistakes": [None, "policy", "format", "policy"],
                "sources": ["policy", "policy", "demo", "policy"]}]
    # gold order a > b > c > d; rewards order a > d > c > b: of the policy pairs (a,b) (a,d) (b,d), (b,d) is
    # wrong
    rep = train_rm.report(records, [torch.tensor([3.0, 0.0, 1.0, 2.0])])
    assert rep["on_policy_pairs"] == 3 and rep["on_policy_gold_accuracy"] == pytest.approx(2 / 3)
    assert rep["gold_accuracy"] == pytest.approx(3 / 6)   # right: (a,b) (a,c) (a,d); wrong: (b,c) (b,d) (c,d)


def test_head_learns_at_its_own_rate(sft, tmp_path):
    """The head starts at 0, so its first AdamW step moves each weight by exactly head_lr (Adam's first step
    is lr * g / |g|) while the trunk, whose gradient is still 0 behind a zero head, only decays by
    lr * weight_decay."""
    out = str(tmp_path / "rm")
    train_rm.main(train_rm.Config(sft=sft, data=pairs_file(tmp_path), out_dir=out, batch_size=64, epochs=1,
                                  warmup_steps=0, lr=1e-4, head_lr=0.05, eval_interval=1, device="cpu"))
    rm, gain = load_model(out, "reward")[0], json.load(open(os.path.join(out, "summary.json")))["gain"]
    head = rm.head.weight / gain                 # the saved head is rescaled (demonstrations' std 1): undo it
    assert torch.allclose(head.abs(), torch.full_like(head, 0.05), rtol=1e-3)
    before = load_model(sft, "lm")[0].state_dict()
    w = rm.gpt.transformer.h[0].mlp.c_fc.weight
    assert torch.allclose(w, before["transformer.h.0.mlp.c_fc.weight"] * (1 - 1e-4 * 0.1), atol=1e-7)


def test_ctrl_c_then_resume_is_exact(sft, tmp_path, monkeypatch):
    data = pairs_file(tmp_path)
    tiny = dict(sft=sft, data=data, batch_size=4, eval_interval=3, log_interval=1, device="cpu", epochs=2,
                dropout=0.1, warmup_steps=2)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train_rm.main(train_rm.Config(out_dir=a, **tiny))
    real = train_rm.cosine_lr

    def interrupt_at_4(step, *args):
        if step == 4:
            raise KeyboardInterrupt
        return real(step, *args)
    monkeypatch.setattr(train_rm, "cosine_lr", interrupt_at_4)
    with pytest.raises(SystemExit) as e:
        train_rm.main(train_rm.Config(out_dir=b, **tiny))
    assert e.value.code == 130 and not os.path.exists(os.path.join(b, "summary.json"))
    monkeypatch.setattr(train_rm, "cosine_lr", real)
    train_rm.main(train_rm.Config(out_dir=b, resume=True, **tiny))

    ra, rb = read_metrics(os.path.join(a, "metrics.jsonl")), read_metrics(os.path.join(b, "metrics.jsonl"))
    assert [r["train_loss"] for r in ra if "train_loss" in r] == \
        [r["train_loss"] for r in rb if "train_loss" in r]
    wa, wb = load_model(a, "reward")[0].state_dict(), load_model(b, "reward")[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    summary = json.load(open(os.path.join(a, "summary.json")))
    assert summary["labeler_agreement"] is None and summary["spearman"] is None   # no world, no gold
    # 28 records: 24 distinct pairs and one ranking written 4 times, kept once
    assert summary["n_train_prompts"] + summary["n_val_prompts"] == 25 and summary["K"] == 4


def test_end_to_end_on_labels(sft, tmp_path):
    labels, out = str(tmp_path / "labels"), str(tmp_path / "rm")
    label.main(label.Config(policy=sft, out_dir=labels, n_prompts=40, k_policy=2, k_demo=4, max_new_tokens=6))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_rm.py"), f"--sft={sft}",
                        f"--labels={labels}", f"--out_dir={out}", "--batch_size=8", "--eval_interval=2",
                        "--log_interval=1", "--bias_prompts=20", "--device=cpu"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.load(open(os.path.join(out, "summary.json")))
    for key in ("accuracy", "labeler_agreement", "ceiling", "spearman", "spearman_within_prompt",
                "labels_spearman_within_prompt", "per_mistake_accuracy", "bias",
                "n_train_prompts", "K", "seconds", "on_policy_pairs", "sft_likelihood"):
        assert summary[key] is not None, key
    assert 0 <= summary["accuracy"] <= 1 and -1 <= summary["spearman"] <= 1 and summary["K"] == 2 + 4
    for name in ("model.pt", "last.pt", "tokenizer.json", "config.json", "metrics.jsonl", "loss.png",
                 "reward_vs_gold.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    # the saved reward model gives the world's demonstrations mean reward 0 and standard deviation 1
    rm, tok, ckpt = load_model(out, "reward")
    assert ckpt["kind"] == "reward" and rm.config.dropout == 0.0
    cfg = train_rm.Config(bias_prompts=20)
    prompts, demos = train_rm.demonstrations_for_bias(cfg, World(0), [])
    rankings = train_rm.ranked_ids(tok, [{"prompt": p, "responses": [y]} for p, y in zip(prompts, demos)], 64)
    rewards = torch.cat(train_rm.all_rewards(rm.eval().score, rankings, tok.pad_id, "cpu"))
    assert abs(rewards.mean().item()) < 1e-4
    assert rewards.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)
    assert summary["bias"] != 0 and summary["gain"] != 1


def test_bad_labels_folder_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run(train_rm.main, train_rm.Config, [f"--labels={tmp_path}/nope", f"--out_dir={tmp_path}/rm"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "run label.py first" in err
