"""evaluate.py: win rates and intervals on hand-computed inputs, the JSON's shape on tiny checkpoints,
and one-line errors (exit 2, nothing written) for bad folders."""

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import evaluate
import train_pretrain
import train_sft
from minigpt.checkpoint import load_model, save_model
from minigpt.cli import run
from minigpt.model import GPT, GPTConfig, RewardModel
from minigpt.tokenizer import Tokenizer
from minigpt.world import World

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {"gold_mean", "per_task", "exact_match", "eos_rate", "mean_len", "pretrain_val_loss",
        "kl_to_ref", "rm_score", "probe_gold_mean", "probe_per_task", "n_responses", "mistake_counts",
        "right_rate"}
KEYS_JSON = KEYS | {"samples_per_prompt", "kl_bound", "gold_ci95", "probe_gold_ci95", "wrong_by_kind"}
AGAINST_BASELINE = {"gain_vs_baseline", "gain_ci95", "win_rate_vs_baseline", "win_rate_ci95",
                    "probe_gain_vs_baseline", "probe_gain_ci95", "wrong_cut_by_kind"}


# ---- the numbers, by hand --------------------------------------------------------------------------------

def test_pairwise_win_and_tie_rates():
    gold = {"A": [1.0, 0.0, 0.5, 1.0], "B": [0.0, 0.0, 0.5, 0.5], "C": [0.0, 1.0, 0.0, 1.0]}
    wins, ties = evaluate.pairwise(gold)
    assert set(wins) == set(ties) == {"A_vs_B", "B_vs_A", "A_vs_C", "C_vs_A", "B_vs_C", "C_vs_B"}
    assert wins["A_vs_B"] == 1.0 and ties["A_vs_B"] == 0.5        # A wins 2, loses 0, ties 2 of 4
    assert wins["B_vs_A"] == 0.0 and ties["B_vs_A"] == 0.5
    # wins at 0 and 2, loses at 1, ties 3
    assert wins["A_vs_C"] == pytest.approx(2 / 3) and ties["A_vs_C"] == 0.25
    assert wins["C_vs_A"] == pytest.approx(1 / 3)
    assert wins["B_vs_C"] == pytest.approx(1 / 3) and ties["B_vs_C"] == 0.25  # wins at 2, loses at 1 and 3


def test_report_on_hand_computed_answers():
    world0 = World(0)
    tasks = [world0.task(i)
             for i in ("计算2+2", "What is 9 - 4?", "Translate to French: red", "Translate to French: red")]
    scores = {"4": 1.0, "Bonjour": 0.0, "Sure! The answer is rouge. Bye!": 0.5, "rouge": 1.0}
    world = SimpleNamespace(gold_score=lambda task, text: scores[text], split=lambda name: [])
    pad, eos = 9, 8
    ans = {"texts": ["4", "Bonjour", "Sure! The answer is rouge. Bye!", "rouge"],
           "eos": [True, False, True, True], "rm": torch.tensor([1.0, 2.0, 3.0, 4.0]),
           "tokens": torch.tensor([[1, eos, pad], [1, 2, 3], [eos, pad, pad], [4, 5, eos]])}
    r, gold, probe, named = evaluate.report(world, tasks, ans, [], None, pad, 3.5, 0.25)
    assert set(r) == KEYS and gold == [1.0, 0.0, 0.5, 1.0] and probe == []
    assert named == [[], ["off_topic"], ["preamble", "rambling"], []]
    assert r["right_rate"] == 0.75                                       # "Bonjour" to 9 - 4: off topic
    assert r["gold_mean"] == 0.625
    assert r["per_task"] == {"arithmetic": 0.5, "translate_en": 0.75}
    assert r["exact_match"] == 0.5 and r["eos_rate"] == 0.75
    assert r["mean_len"] == (1 + 3 + 0 + 2) / 4                      # tokens before end-of-text, pad excluded
    assert r["rm_score"] == 2.5 and r["pretrain_val_loss"] == 3.5 and r["kl_to_ref"] == 0.25
    assert r["probe_gold_mean"] is None and r["probe_per_task"] is None and r["n_responses"] == 4
    assert r["mistake_counts"] == {"preamble": 1, "rambling": 1, "repeat_question": 0, "format": 0,
                                   "wrong_language": 0, "wrong_answer": 0, "refusal": 0, "off_topic": 1,
                                   "earlier_answer": 0, "forgot_system": 0}


def test_wrong_answers_by_kind_hand_computed():
    # 2 samples x 3 prompts (arithmetic, code, shop), sample-major; 1 = a wrong answer
    kinds = ["arithmetic", "code", "shop"] * 2
    wrong = {"sft": [1, 1, 0, 1, 0, 1], "rl": [0, 1, 0, 0, 0, 1]}
    results = {"sft": {}, "rl": {}}
    evaluate.wrong_by_kind(results, wrong, kinds, "sft", samples=2, seed=0)
    assert results["sft"]["wrong_by_kind"] == {"arithmetic": 2, "code": 1, "shop": 1, "arithmetic+code": 3}
    assert results["rl"]["wrong_by_kind"] == {"arithmetic": 0, "code": 1, "shop": 1, "arithmetic+code": 1}
    cut = results["rl"]["wrong_cut_by_kind"]
    assert cut["arithmetic"][0] == 1.0 and cut["code"][0] == 0.0 and cut["shop"][0] == 0.0
    assert cut["arithmetic+code"][0] == pytest.approx(1 - 1 / 3)
    assert cut["arithmetic"][1:] == [1.0, 1.0]          # whichever prompts are drawn, none is left wrong
    assert "wrong_cut_by_kind" not in results["sft"]


def test_finite_makes_valid_json():
    assert evaluate.finite({"a": float("nan"), "b": [1.0, float("inf")], "c": None, "d": 2}) == \
        {"a": None, "b": [1.0, None], "c": None, "d": 2}


def test_parse_models():
    expected = [("pre", "out/pretrain"), ("sft", "out/sft/")]
    assert evaluate.parse_models("pre:out/pretrain,out/sft/") == expected
    with pytest.raises(Exception, match="twice"):
        evaluate.parse_models("a:x,a:y")


# ---- end to end on tiny checkpoints ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """pretrain (train_pretrain.py, in this process), sft (train_sft.py on two demonstrations), rm (random
    head), and a model with a different tokenizer."""
    root = tmp_path_factory.mktemp("eval")
    pre, sft, rm, other = (str(root / n) for n in ("pretrain", "sft", "rm", "other"))
    text = root / "corpus.txt"
    text.write_text(World(0).corpus(60_000), encoding="utf-8")
    train_pretrain.main(train_pretrain.Config(
        out_dir=pre, data=str(text), n_layer=1, n_head=2, n_embd=32, vocab_size=300, tokenizer_chars=20000,
        max_steps=5, block_size=64, batch_size=4, eval_interval=5, eval_batches=1, log_interval=5,
        device="cpu"))
    demos = root / "demos.json"
    demos.write_text(json.dumps([{"instruction": "计算2+2", "output": "4"},
                                 {"instruction": "Say hi", "output": "hi"}]))
    train_sft.main(train_sft.Config(init=pre, out_dir=sft, data=str(demos), max_steps=3, batch_size=2,
                                    lr=1e-2, max_new_tokens=16, device="cpu"))
    gpt, tok, _ = load_model(pre)
    reward = RewardModel.from_gpt(gpt)
    torch.nn.init.normal_(reward.head.weight, std=1.0)
    save_model(rm, reward, tok, "reward")
    tok2 = Tokenizer.train("completely different text 12345 " * 50, 270)
    config = GPTConfig(block_size=64, vocab_size=270, n_layer=1, n_head=2, n_embd=32)
    save_model(other, GPT(config), tok2, "lm")
    return SimpleNamespace(pre=pre, sft=sft, rm=rm, other=other, root=root)


def test_json_has_every_key(folders):
    out = str(folders.root / "eval.json")
    r = subprocess.run([sys.executable, "evaluate.py", f"--models=pretrain:{folders.pre},{folders.sft}",
                        f"--ref={folders.sft}", f"--rm={folders.rm}", "--best_of=2", "--greedy",
                        "--n_prompts=6", "--samples_per_prompt=3", "--show=6", "--max_new_tokens=8",
                        "--val_tokens=512", "--device=cpu", f"--json={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.load(open(out))
    assert {"models", "win_rates", "tie_rates", "n_prompts", "temperature", "seed"} <= set(res)
    assert (res["n_prompts"] == 6 and res["temperature"] == 1.0 and res["seed"] == 0
            and res["samples_per_prompt"] == 3)
    names = {"pretrain", "sft", "pretrain_greedy", "sft_greedy", "best_of_2"}
    assert set(res["models"]) == names and res["baseline"] == "pretrain" and res["split"] == "test"
    for name, m in res["models"].items():
        assert set(m) == KEYS_JSON | (set() if name == "pretrain" else AGAINST_BASELINE), name
        lo, hi = m["gold_ci95"]
        assert lo <= m["gold_mean"] <= hi
        if name != "pretrain":
            lo, hi = m["gain_ci95"]
            assert lo <= m["gain_vs_baseline"] <= hi
            baseline_mean = res["models"]["pretrain"]["gold_mean"]
            assert m["gain_vs_baseline"] == pytest.approx(m["gold_mean"] - baseline_mean)
        assert (m["n_responses"] == 6 * m["samples_per_prompt"]
                and m["samples_per_prompt"] == (1 if "greedy" in name else 3))
        assert sum(m["mistake_counts"].values()) >= m["n_responses"] * (1 - m["exact_match"]) - 1e-9
        for key in KEYS - {"per_task", "probe_per_task", "kl_to_ref", "mistake_counts", "n_responses"}:
            assert isinstance(m[key], float) and math.isfinite(m[key]), (name, key)
        assert m["per_task"] and all(0 <= v <= 1 for v in m["per_task"].values())
        assert 0 <= m["gold_mean"] <= 1 and 0 <= m["eos_rate"] <= 1
    assert res["models"]["sft"]["kl_to_ref"] == 0.0                  # the reference itself
    assert math.isfinite(res["models"]["pretrain"]["kl_to_ref"])
    assert res["models"]["sft_greedy"]["kl_to_ref"] is None          # greedy answers are not samples of π
    best = res["models"]["best_of_2"]                                # estimated on its 6 samples per prompt
    assert (best["kl_bound"] == pytest.approx(math.log(2) - 0.5)
            and 0 <= best["kl_to_ref"] <= best["kl_bound"] + 1e-9)
    # best-of-2's answers are its own draws, never the SFT answer each is paired with (independent 8-token
    # samples of an untrained model are never the same text). Its seed is its own too (evaluate.py), though
    # here the batch layout alone would already make the draws differ.
    pairs = [(r["responses"]["sft"]["text"], r["responses"]["best_of_2"]["text"]) for r in res["samples"]]
    assert len(pairs) == 6 and not [a for a, b in pairs if a == b]
    assert len(res["win_rates"]) == len(res["tie_rates"]) == len(names) * (len(names) - 1)
    assert all(v is None or 0 <= v <= 1 for v in res["win_rates"].values())


@pytest.mark.parametrize("case", ["missing", "wrong_kind", "tokenizer_ref", "tokenizer_rm"])
def test_bad_input_is_one_line_and_writes_nothing(folders, case, tmp_path, capsys):
    args = {"missing": [f"--models={tmp_path / 'nope'}"],
            "wrong_kind": [f"--models=rm:{folders.rm}"],
            "tokenizer_ref": [f"--models={folders.sft}", f"--ref={folders.other}"],
            "tokenizer_rm": [f"--models={folders.other}", f"--rm={folders.rm}"]}[case]
    out = tmp_path / "eval.json"
    with pytest.raises(SystemExit) as e:
        run(evaluate.main, evaluate.Config, args + [f"--json={out}", "--device=cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and err.count("\n") == 1, err
    assert not out.exists()
