"""train_grpo.py on tiny random models: the group advantage, the k3 KL in the loss, ratio 1 at the start, and
an end-to-end run without a value model."""

import json
import os
import subprocess
import sys

import pytest
import torch

import train_grpo
from minigpt.checkpoint import load_checkpoint, save_model
from minigpt.model import GPT
from minigpt.ppo import group_advantages, k3_kl, masked_mean
from minigpt.rollout import rollout, score
from minigpt.scoring import response_logprobs
from minigpt.training import autocast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["Add 3 and 4.", "Reverse the word cat."]


def test_grpo_update_has_no_value_model_and_puts_the_k3_kl_in_the_loss(tiny):
    """GRPO: G samples of each prompt, advantages relative to the group on every token, no value model; at the
    start the policy is the reference, so the k3 term is exactly 0 and the ratio exactly 1."""
    cfg = train_grpo.Config(group_size=4, batch_size=2, minibatch_size=4, epochs=2, lr=1e-3, kl_coef=0.5,
                            max_new_tokens=8, debug=True)
    policy = GPT(tiny.config).eval()
    policy.load_state_dict(tiny.policy.state_dict())
    batch = rollout(policy, tiny.tokenizer, [p for p in PROMPTS for _ in range(4)], cfg.max_new_tokens,
                    cfg.temperature, torch.Generator().manual_seed(3))
    with torch.no_grad(), autocast("cpu", cfg.dtype):
        logprobs = response_logprobs(policy, batch, cfg.temperature)
        scores, _ = score(tiny.reward_model, tiny.tokenizer, batch, cfg.no_eos_penalty)
    advantages = group_advantages(scores, 4)[:, None] * batch["mask"]
    assert abs(advantages[:, 0].view(2, 4).sum(1)).max() < 1e-5           # each group's baseline is its mean
    batch.update(logprobs=logprobs, ref_logprobs=logprobs.clone(), advantages=advantages)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, eps=1e-5)
    steps = train_grpo.grpo_update(policy, opt, batch, cfg, torch.Generator().manual_seed(0))
    assert len(steps) == cfg.epochs * 8 // cfg.minibatch_size and "vf_loss" not in steps[0]
    assert steps[0]["max_abs_log_ratio"] == 0.0 and steps[0]["kl_loss"] == 0.0
    assert steps[-1]["kl_loss"] > 0                                       # moved away: the k3 term pulls back
    # the loss is the clipped surrogate + beta * mean k3: checked on the moved policy
    loss, stats = train_grpo.grpo_loss(policy, batch, cfg)
    with torch.no_grad():
        new = response_logprobs(policy, batch, cfg.temperature)
    expected = stats["pg_loss"] + cfg.kl_coef * masked_mean(k3_kl(new, logprobs), batch["mask"]).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_minibatch_size_must_divide_the_groups():
    with pytest.raises(train_grpo.UserError, match="batch_size x --group_size"):
        train_grpo.Config(batch_size=3, group_size=2, minibatch_size=4).validate()


def test_end_to_end_tiny_run_has_no_value_model(tiny, tmp_path):
    sft, rm, out = tmp_path / "sft", tmp_path / "rm", tmp_path / "grpo"
    save_model(str(sft), tiny.policy, tiny.tokenizer, "lm")
    save_model(str(rm), tiny.reward_model, tiny.tokenizer, "reward")
    args = [sys.executable, "train_grpo.py", f"--sft={sft}", f"--rm={rm}", f"--out_dir={out}",
            "--batch_size=2", "--group_size=4", "--minibatch_size=4", "--epochs=1", "--max_new_tokens=6",
            "--val_prompts=8", "--eval_interval=2", "--sample_interval=1", "--device=cpu", "--debug",
            "--iterations=2", "--reward=verifier"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("model.pt", "last.pt", "summary.json", "metrics.jsonl", "config.json", "tokenizer.json",
                 "grpo.png"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "grpo" and summary["episodes"] == 2 * 2 * 4       # 2 prompts x 4 samples, twice
    assert summary["reward"] == "verifier" and "validation reward" in done.stdout
    assert "value" not in load_checkpoint(str(out / "last.pt"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["first_minibatch_log_ratio"] == 0.0 and r["kl_loss"] >= 0 for r in rows if "rm_score" in r)
    # no value model, so no value statistics: neither logged nor printed (they would read "ev nan")
    assert not any("explained_variance" in r for r in rows) and "| ev " not in done.stdout
    # the checker's share of right answers on the checkable validation prompts (none right, untrained)
    assert [r["val_verified"] for r in rows if "val_kl" in r] == [0.0, 0.0]
    assert "nan" not in done.stdout
