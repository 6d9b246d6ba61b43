"""train_ppo.py, minigpt/rollout.py and minigpt/scoring.py's rollout log-probs on tiny random models: the PPO
sanity checks (ratio 1 at the start, recomputed log-probs equal the sampled ones, padding changes nothing, the
no-EOS penalty, the value's off-by-one) and an end-to-end run."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import train_ppo
from minigpt.checkpoint import load_checkpoint, save_model
from minigpt.cli import run
from minigpt.data import encode_for_reward, render_prompt
from minigpt.model import GPT, RewardModel
from minigpt.ppo import kl_penalty_rewards
from minigpt.rollout import iteration_seeds, prompts_for_iteration, response_values, rollout, score
from minigpt.scoring import response_logprobs
from minigpt.training import autocast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["Add 3 and 4.", "Reverse the word cat.", "List the colours of the flag of a country you like.",
           "Say hi.", "Write a short answer.", "Name a colour.", "What is 2 plus 2?", "Sort: b, a, c."]


def make_cfg(**overrides):
    base = dict(batch_size=8, minibatch_size=4, ppo_epochs=2, lr=1e-3, value_lr=1e-3, max_new_tokens=8,
                debug=True)
    return train_ppo.Config(**{**base, **overrides})


def end_early(batch, lengths, tokenizer):
    """Make row b's response end with end-of-text after lengths[b] tokens (a random tiny model rarely
    stops)."""
    P = batch["P"]
    for b, n in enumerate(lengths):
        batch["response"][b, n - 1], batch["response"][b, n:] = tokenizer.eos_id, tokenizer.pad_id
        batch["mask"][b, n:] = 0
        batch["eos"][b] = True
    batch["query_response"][:, P:] = batch["response"]
    batch["attention_mask"][:, P:] = batch["mask"]
    batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return batch


def rolled_out(tiny, cfg, seed=0, lengths=None):
    """A full rollout batch as main() builds it: logprobs, values, advantages, returns."""
    policy, value_model = tiny.policy, tiny.reward_model
    batch = rollout(policy, tiny.tokenizer, PROMPTS, cfg.max_new_tokens, cfg.temperature,
                    torch.Generator().manual_seed(seed))
    if lengths:
        end_early(batch, lengths, tiny.tokenizer)
    with torch.no_grad(), autocast("cpu", cfg.dtype):                    # as main(): pi_old in cfg.dtype too
        logprobs = response_logprobs(policy, batch, cfg.temperature)
        values = response_values(value_model, batch)
        scores, _ = score(tiny.reward_model, tiny.tokenizer, batch, cfg.no_eos_penalty)
        rewards, _ = kl_penalty_rewards(logprobs, logprobs - 0.1, scores, batch["mask"], 0.02)
        advantages, returns = train_ppo.compute_advantages(rewards, values, batch["mask"])
    batch.update(logprobs=logprobs, values=values, advantages=advantages, returns=returns)
    return batch


def test_recomputed_logprobs_equal_the_sampled_ones(tiny):
    """Rollout (KV cache, left-padded prompts) and scoring (one forward) see one distribution (detail 12)."""
    for temperature in (1.0, 0.7):
        batch = rollout(tiny.policy, tiny.tokenizer, PROMPTS, 10, temperature,
                        torch.Generator().manual_seed(1))
        # prompts of different lengths: left padding
        assert batch["attention_mask"][:, : batch["P"]].min() == 0
        with torch.no_grad():
            recomputed = response_logprobs(tiny.policy, batch, temperature)
        real = batch["mask"].bool()
        assert real.sum() > len(PROMPTS)
        torch.testing.assert_close(recomputed[real], batch["sample_logprobs"][real], atol=1e-4, rtol=0)
        # and with a different temperature they would NOT match: the check has teeth
        with torch.no_grad():
            other = response_logprobs(tiny.policy, batch, temperature * 2)
        assert (other[real] - batch["sample_logprobs"][real]).abs().max() > 1e-2


def test_a_sampled_pad_token_mid_response_counts_as_real(tiny):
    """A policy can sample the pad id; generate() then treats it as a real token, and so must the mask."""
    policy = GPT(tiny.config).eval()
    policy.load_state_dict(tiny.policy.state_dict())
    with torch.no_grad():               # push the pad token's logit up: h·w_pad ≈ |u|²·10 for ln_f.bias = u
        u = torch.full((tiny.config.n_embd,), 0.15)
        policy.transformer.ln_f.bias.copy_(u)
        policy.transformer.wte.weight[tiny.tokenizer.pad_id] = 10 * u
    batch = rollout(policy, tiny.tokenizer, PROMPTS, 8, 1.0, torch.Generator().manual_seed(5))
    sampled_pad = (batch["response"] == tiny.tokenizer.pad_id) & batch["mask"].bool()
    assert sampled_pad.any()
    with torch.no_grad():
        recomputed = response_logprobs(policy, batch, 1.0)
    real = batch["mask"].bool()
    torch.testing.assert_close(recomputed[real], batch["sample_logprobs"][real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ratio_is_exactly_one_on_the_first_minibatch_then_moves(tiny, dtype):
    cfg = make_cfg(dtype=dtype)
    policy, value_model = GPT(tiny.config).eval(), RewardModel(tiny.config).eval()
    policy.load_state_dict(tiny.policy.state_dict())
    value_model.load_state_dict(tiny.reward_model.state_dict())
    batch = rolled_out(SimpleNamespace(**{**vars(tiny), "policy": policy, "reward_model": value_model}), cfg)
    opt_p = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, eps=1e-5)
    opt_v = torch.optim.AdamW(value_model.parameters(), lr=cfg.value_lr, eps=1e-5)
    steps = train_ppo.ppo_update(policy, value_model, opt_p, opt_v, batch, cfg,
                                 torch.Generator().manual_seed(0))
    assert len(steps) == cfg.ppo_epochs * cfg.batch_size // cfg.minibatch_size
    assert steps[0]["ratio_mean"] == 1.0                       # exactly: same weights, inputs and maths
    assert steps[0]["max_abs_log_ratio"] == 0.0
    assert steps[0]["approx_kl"] == 0.0 and steps[0]["clipfrac"] == 0.0
    assert max(s["max_abs_log_ratio"] for s in steps[1:]) > 0  # the updates did move the policy


def test_response_without_eos_gets_the_penalty(tiny):
    cfg = make_cfg(no_eos_penalty=-7.5)
    batch = rollout(tiny.policy, tiny.tokenizer, PROMPTS, 6, 1.0, torch.Generator().manual_seed(2))
    batch["eos"] = torch.tensor([True, False] * (len(PROMPTS) // 2))
    scores, rm_scores = score(tiny.reward_model, tiny.tokenizer, batch, cfg.no_eos_penalty)
    assert (scores[~batch["eos"]] == -7.5).all()
    assert torch.equal(scores[batch["eos"]], rm_scores[batch["eos"]])
    # the RM score is read at the end-of-text after the response's text, encoded as train_rm.py encodes it
    for b, (instruction, text) in enumerate(zip(batch["instructions"], batch["texts"])):
        ids = encode_for_reward(tiny.tokenizer, instruction, text, tiny.config.block_size)[0]
        with torch.no_grad():
            alone = tiny.reward_model(torch.tensor([ids]))[0, -1]                       # (1, T_b) unpadded
        assert rm_scores[b].item() == pytest.approx(alone.item(), abs=1e-5)


def test_reward_reads_the_text_not_the_sampled_ids(tiny):
    """A policy can sample one text as different ids ("cat" as one token or three). The reward model was
    trained on the text's own encoding, so PPO must score that, or a spelling it never saw earns a reward of
    its own."""
    tok, instruction = tiny.tokenizer, PROMPTS[3]
    text = "the cat"
    canonical = tok.encode(text)
    spelt = [i for ch in text for i in tok.encode(ch)]              # the same text, one token per character
    assert spelt != canonical and tok.decode(spelt) == tok.decode(canonical) == text
    prompt = tok.encode(render_prompt(instruction))

    def batch_of(ids):
        qr = torch.tensor([prompt + ids + [tok.eos_id]])
        return {"instructions": [instruction], "texts": [tok.decode(ids)], "eos": torch.tensor([True]),
                "response": qr, "query_response": qr, "attention_mask": torch.ones_like(qr)}

    a, b = batch_of(canonical), batch_of(spelt)
    with torch.no_grad():
        by_ids = [tiny.reward_model.score(x["query_response"], x["attention_mask"]).item() for x in (a, b)]
    assert abs(by_ids[0] - by_ids[1]) > 1e-3                        # scoring ids: two spellings, two rewards
    by_text = [score(tiny.reward_model, tok, x, -1.0)[0].item() for x in (a, b)]
    assert by_text[0] == by_text[1] == pytest.approx(by_ids[0], abs=1e-5)  # scoring the text: one reward


def test_value_of_the_first_response_token_is_read_at_the_last_prompt_token(tiny):
    batch = rollout(tiny.policy, tiny.tokenizer, PROMPTS, 6, 1.0, torch.Generator().manual_seed(3))
    with torch.no_grad():
        values = response_values(tiny.reward_model, batch)                  # (B, N)
        for b in range(len(PROMPTS)):
            prompt = batch["query_response"][b, : batch["P"]][batch["attention_mask"][b, : batch["P"]].bool()]
            v_prompt = tiny.reward_model(prompt[None])[0, -1]               # V(x): before any response token
            assert values[b, 0].item() == pytest.approx(v_prompt.item(), abs=1e-5)
            n = int(batch["mask"][b].sum())
            if n >= 2:                                                      # V(x ⊕ y_0) for the second token
                seq = torch.cat([prompt, batch["response"][b, :1]])[None]
                assert values[b, 1].item() == pytest.approx(tiny.reward_model(seq)[0, -1].item(), abs=1e-5)


def test_padding_contributes_nothing(tiny):
    cfg = make_cfg()
    batch = rolled_out(tiny, cfg, seed=4, lengths=[1, 8, 3, 5, 2, 8, 7, 4])
    pads = ~batch["mask"].bool()
    loss, _ = train_ppo.ppo_loss(tiny.policy, tiny.reward_model, batch, cfg)
    junk = dict(batch)
    for key in ("values", "advantages", "returns", "logprobs"):
        junk[key] = torch.where(pads, torch.full_like(batch[key], 1e6), batch[key])
    # other token ids in the response padding: no real token attends to them
    junk["query_response"] = batch["query_response"].clone()
    junk["query_response"][:, batch["P"]:][pads] = 5
    loss_junk, _ = train_ppo.ppo_loss(tiny.policy, tiny.reward_model, junk, cfg)
    assert loss_junk.item() == pytest.approx(loss.item(), abs=1e-6)
    # advantages: values at pad positions change nothing on the real tokens
    rewards = torch.where(pads, 0.0, torch.randn_like(batch["values"]))
    a1, r1 = train_ppo.compute_advantages(rewards, batch["values"], batch["mask"])
    a2, r2 = train_ppo.compute_advantages(rewards, junk["values"], batch["mask"])
    assert torch.equal(a1, a2) and torch.equal(r1, r2)


def test_prompt_order_is_a_function_of_the_iteration():
    n, gb = 10, 4
    seen = [i for it in range(5) for i in prompts_for_iteration(n, it, gb, 0, 1, seed=0)]
    # every prompt once a pass
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    ranks = [prompts_for_iteration(n, 3, gb, r, 2, seed=0) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(prompts_for_iteration(n, 3, gb, 0, 1, seed=0))


def test_iteration_seeds_are_the_historical_formula_and_never_collide():
    """seed*1000 + iteration*world_size + rank samples, 7 more shuffles: a resumed run draws what an
    uninterrupted one would, and no two (iteration, rank) of one run share a sampling seed."""
    assert iteration_seeds(1337, 5, 1, 2) == (1337 * 1000 + 5 * 2 + 1, 1337 * 1000 + 5 * 2 + 1 + 7)
    seen = {iteration_seeds(3, it, r, 4)[0] for it in range(100) for r in range(4)}
    assert len(seen) == 400


def test_end_to_end_tiny_run_writes_the_stage_folder(tiny, tmp_path, capsys):
    sft, rm, out = tmp_path / "sft", tmp_path / "rm", tmp_path / "ppo"
    save_model(str(sft), tiny.policy, tiny.tokenizer, "lm")
    save_model(str(rm), tiny.reward_model, tiny.tokenizer, "reward")
    args = [sys.executable, "train_ppo.py", f"--sft={sft}", f"--rm={rm}", f"--out_dir={out}",
            "--batch_size=8", "--minibatch_size=4", "--ppo_epochs=1", "--max_new_tokens=6", "--val_prompts=8",
            "--eval_interval=2", "--sample_interval=1", "--device=cpu", "--debug"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args + ["--iterations=2"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "32 validation responses (8 prompts x 4)" in done.stdout          # --val_samples defaults to 4
    ppo_stdout = done.stdout
    for name in ("model.pt", "last.pt", "summary.json", "metrics.jsonl", "config.json", "tokenizer.json",
                 "ppo.png"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["selected_iteration"] in (0, 2)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "rm_score" in r] == [1, 2]
    assert all(r["first_minibatch_log_ratio"] == 0.0 for r in rows if "rm_score" in r)
    # resume (in this process: a second interpreter start costs more than the run) continues from last.pt
    cfg = train_ppo.Config(sft=str(sft), rm=str(rm), out_dir=str(out), batch_size=8, minibatch_size=4,
                           ppo_epochs=1, max_new_tokens=6, val_prompts=8, eval_interval=2, device="cpu",
                           iterations=3, resume=True)
    train_ppo.main(cfg)
    assert json.loads((out / "summary.json").read_text())["iterations"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "rm_score" in r] == [1, 2, 3]
    assert "| ev " in ppo_stdout and "nan" not in ppo_stdout
    assert {"value", "value_optimizer"} <= set(load_checkpoint(str(out / "last.pt")))     # PPO's fourth model
    # a wrong kind of folder is a one-line error, exit code 2
    with pytest.raises(SystemExit) as exit_info:
        run(train_ppo.main, train_ppo.Config, [f"--sft={rm}", f"--rm={rm}", f"--out_dir={tmp_path / 'x'}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")
