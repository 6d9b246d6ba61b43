"""sweep.py and its pure functions: best-of-n's exact expectation against brute force over every n-subset,
Gao's fits recovering known (α, β), and an end-to-end tiny sweep on tiny random models."""

import json
import math
import os
import subprocess
import sys
from itertools import combinations

import numpy as np
import pytest
import torch

import sweep
from minigpt.checkpoint import save_model
from minigpt.cli import run
from minigpt.evaluation import best_of_n_expectation, fit_best_of_n, fit_rl, gao_best_of_n, gao_rl
from minigpt.model import GPT, GPTConfig, RewardModel
from minigpt.tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def brute_force(rm, gold, n):
    """Every n-subset equally likely; in each, the max-RM samples share the pick (ties broken uniformly)."""
    total_rm = total_gold = 0.0
    subsets = list(combinations(range(len(rm)), n))
    for s in subsets:
        top = max(rm[i] for i in s)
        tied = [i for i in s if rm[i] == top]
        total_rm += top
        total_gold += sum(gold[i] for i in tied) / len(tied)
    return total_rm / len(subsets), total_gold / len(subsets)


@pytest.mark.parametrize("ties", [False, True])
def test_best_of_n_expectation_equals_brute_force(ties):
    rng = np.random.default_rng(0)
    for m in range(1, 9):
        for trial in range(3):
            # ties: few distinct scores
            rm = rng.integers(0, 3, m).astype(float) if ties else rng.normal(size=m)
            gold = rng.random(m)
            for n in range(1, m + 1):
                got = best_of_n_expectation(rm, gold, n)
                want = brute_force(rm, gold, n)
                assert (got[0] == pytest.approx(want[0], abs=1e-12)
                        and got[1] == pytest.approx(want[1], abs=1e-12))


def test_best_of_n_expectation_ends():
    rm, gold = [0.3, -1.0, 2.0, 0.5, 2.0], [0.1, 0.0, 0.6, 0.9, 1.0]
    # n = 1: the mean; n = m: the max (tied: their mean)
    assert best_of_n_expectation(rm, gold, 1) == pytest.approx((np.mean(rm), np.mean(gold)), abs=1e-12)
    assert best_of_n_expectation(rm, gold, 5) == pytest.approx((2.0, 0.8), abs=1e-12)
    assert best_of_n_expectation([1.0, 3.0, 2.0], [0.0, 1.0, 0.5], 3) == (3.0, 1.0)
    # distinct scores: the k-th smallest is picked with probability C(k-1, n-1) / C(m, n); m = 4, n = 2: 0,
    # 1/6, 2/6, 3/6
    assert best_of_n_expectation([1, 2, 3, 4], [0, 6, 12, 18], 2)[1] == pytest.approx(1 + 4 + 9, abs=1e-12)
    with pytest.raises(ValueError):
        best_of_n_expectation([1.0, 2.0], [0.0, 1.0], 3)
    with pytest.raises(ValueError):
        best_of_n_expectation([1.0, 2.0], [0.0], 1)


def test_best_of_n_expectation_large_m_is_a_distribution():
    # m = 64: the weights C(k-1, n-1) / C(64, n) sum to 1, so a constant gold stays that constant
    rm = np.random.default_rng(1).normal(size=64)
    for n in (1, 2, 8, 32, 64):
        assert best_of_n_expectation(rm, np.full(64, 0.25), n)[1] == pytest.approx(0.25, abs=1e-12)
    means = [best_of_n_expectation(rm, rm, n)[0] for n in (1, 2, 4, 8, 16, 32, 64)]
    assert means == sorted(means) and means[-1] == pytest.approx(rm.max())


def test_fits_recover_alpha_and_beta():
    d = np.sqrt([0.0, 0.31, 0.90, 1.6, 2.4, 3.2])                   # best-of-n's √KL for n = 1..64, roughly
    assert fit_best_of_n(d, gao_best_of_n(d, 0.12, 0.05)) == pytest.approx((0.12, 0.05), abs=1e-12)
    d = np.linspace(0.05, 3.0, 12)
    assert fit_rl(d, gao_rl(d, 0.2, 0.08)) == pytest.approx((0.2, 0.08), abs=1e-12)
    # the RL fit ignores d <= 0 (log d undefined); R(0) = 0 anyway
    assert fit_rl(np.r_[0.0, d], np.r_[5.0, gao_rl(d, 0.2, 0.08)]) == pytest.approx((0.2, 0.08), abs=1e-12)
    assert gao_rl(0.0, 0.2, 0.08) == 0.0
    # too few points to fit two coefficients: NaN, not an error
    assert all(math.isnan(x) for x in fit_rl([0.0, 0.5], [0.0, 0.1]))
    assert all(math.isnan(x) for x in fit_best_of_n([0.0], [0.0]))


def test_parse_runs_and_bad_flags():
    assert sweep.parse_runs("0.1:60, 0.01:120") == [(0.1, 60), (0.01, 120)] and sweep.parse_runs("") == []
    for spec in ("0.1", "x:3", "0.1:0", "-1:5", "0.1:5,0.1:10"):
        with pytest.raises(sweep.UserError):
            sweep.parse_runs(spec)
    with pytest.raises(sweep.UserError, match="set by the sweep"):
        sweep.Config(ppo_args="--kl_coef=0.5").validate()
    with pytest.raises(sweep.UserError, match="unknown option --nope"):
        sweep.Config(ppo_args="--nope=1").validate()


TEXT = ("Translate to French: red. What is 2 + 2? Write a Python expression. Hello! How much does it cost? "
        "Which is larger, 3 or 7? 翻译成法语：你好 计算2+2 ") * 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny GPT and reward model saved as stage folders (like tests/test_train_ppo.py's)."""
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(TEXT, 300)
    config = GPTConfig(block_size=64, vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32)
    reward_model = RewardModel(config).eval()
    with torch.no_grad():
        reward_model.head.weight.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("stages")
    save_model(str(folder / "sft"), GPT(config).eval(), tokenizer, "lm")
    save_model(str(folder / "rm"), reward_model, tokenizer, "reward")
    return folder


def test_end_to_end_tiny_sweep(tiny, tmp_path):
    out = tmp_path / "sweep"
    args = [sys.executable, "sweep.py", f"--sft={tiny / 'sft'}", f"--rm={tiny / 'rm'}", f"--out_dir={out}",
            "--n_prompts=4", "--samples=4", "--max_new_tokens=6", "--ppo_runs=0.1:2", "--eval_interval=1",
            "--ppo_args=--batch_size=4 --minibatch_size=4 --val_prompts=4 --ppo_epochs=1", "--device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "overoptimisation.png").stat().st_size > 0
    result = json.loads((out / "sweep.json").read_text())
    assert set(result) == {"forms", "best_of_n", "rl", "seconds", "settings", "machine"}
    assert [p["n"] for p in result["best_of_n"]["points"]] == [1, 2, 4]
    assert set(result["best_of_n"]["points"][0]) == {"n", "kl", "sqrt_kl", "proxy", "gold", "kl_estimated"}
    assert result["best_of_n"]["points"][0]["kl"] == 0.0
    assert set(result["best_of_n"]["fit"]) == {"gold", "proxy"}
    assert set(result["best_of_n"]["fit"]["gold"]) == {"alpha", "beta", "rmse", "peak_sqrt_kl", "peak_gain",
                                                        "points"}
    (ppo,) = result["rl"]["runs"]
    assert ppo["kl_coef"] == 0.1 and [p["iteration"] for p in ppo["points"]] == [0, 1, 2]
    assert ppo["points"][0]["kl"] == 0.0 and set(ppo["fits"]) == {"gold", "proxy"}
    assert (out / "ppo_beta0.1" / "summary.json").exists() and (out / "ppo_beta0.1" / "train.log").exists()
    assert result["settings"]["samples"] == 4 and result["seconds"]["total"] > 0


def test_missing_sft_folder_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(sweep.main, sweep.Config, [f"--sft={tmp_path / 'nope'}", f"--out_dir={tmp_path / 'out'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()                                   # nothing written


def test_unknown_flag_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        run(sweep.main, sweep.Config, ["--betas=0.1"])
    err = capsys.readouterr().err
    assert "unknown option --betas" in err and "--ppo_runs" in err and err.count("\n") == 1
