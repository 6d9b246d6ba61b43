"""Two runs compared (minigpt/compare.py): the difference of gains and its interval hand-computed on tiny
eval.json files, identical runs, the checks on what can be compared, and `pipeline.py --compare`."""

import json
import os
import subprocess
import sys

import pytest

from minigpt.cli import UserError
from minigpt.compare import compare_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_folder(path, scores, ci, world=1, split="test", dialogue=True, n_prompts=3):
    """A finished run as compare.py reads it: report.json, eval/eval.json (and eval_dialogue/eval.json).
    scores: {model: flat list, 2 answers x n_prompts, answer-major}; ci: {model: its gain interval}."""
    os.makedirs(path)
    with open(os.path.join(path, "report.json"), "w") as f:
        json.dump({"world_seed": world, "eval_split": split, "models": {}}, f)
    evaluation = {"scores": scores, "samples_per_prompt": 2, "n_prompts": n_prompts, "baseline": "sft",
                  "models": {name: {"gain_ci95": c} for name, c in ci.items()}}
    for stage in ("eval", "eval_dialogue") if dialogue else ("eval",):
        os.makedirs(os.path.join(path, stage))
        with open(os.path.join(path, stage, "eval.json"), "w") as f:
            json.dump(evaluation, f)
    return str(path)


# Run A: SFT 0.5 everywhere; PPO's answers (answer 0 of prompts 0-2, then answer 1) gain 0.2, 0, 0.4 and
# 0, 0.2, 0.4: mean 0.2, per prompt 0.1, 0.1, 0.4. Run B: SFT 0.4, PPO 0.5: gain 0.1 on every prompt.
# A − B = 0.1; per prompt 0, 0, 0.3, so a resample of the 3 prompts gives 0 when prompt 2 is not drawn
# (probability (2/3)³ = 30%) and 0.3 when only it is ((1/3)³ = 3.7%): both beyond 2.5%, the interval is
# [0, 0.3] exactly.
A = {"sft": [0.5] * 6, "pretrained": [0.0] * 6, "ppo": [0.7, 0.5, 0.9, 0.5, 0.7, 0.9]}
B = {"sft": [0.4] * 6, "pretrained": [0.0] * 6, "ppo": [0.5] * 6}


def test_difference_of_gains_hand_computed(tmp_path):
    a = run_folder(tmp_path / "a", A, {"ppo": [0.15, 0.25]})
    b = run_folder(tmp_path / "b", B, {"ppo": [0.05, 0.15]}, dialogue=False)
    result = compare_runs(a, b)
    assert list(result) == ["single turns"]             # b has no conversations: that split is left out
    (ppo,) = result["single turns"]                     # neither SFT nor the pretrained model is a method
    assert ppo["name"] == "ppo" and ppo["label"] == "PPO"
    assert (ppo["gain_a"], ppo["gain_b"]) == (pytest.approx(0.2), pytest.approx(0.1))
    assert ppo["diff"] == pytest.approx(0.1) and ppo["diff_ci95"] == pytest.approx([0.0, 0.3])
    assert ppo["ci95_a"] == [0.15, 0.25] and not ppo["inside"]   # 0.2 lies outside B's [0.05, 0.15]


def test_identical_runs_differ_by_nothing(tmp_path):
    a = run_folder(tmp_path / "a", A, {"ppo": [0.15, 0.25]})
    again = run_folder(tmp_path / "again", A, {"ppo": [0.15, 0.25]})
    result = compare_runs(a, again)
    assert list(result) == ["single turns", "conversations"]
    for (ppo,) in result.values():
        assert ppo["diff"] == 0.0 and ppo["diff_ci95"] == [0.0, 0.0] and ppo["inside"]


def test_only_runs_of_the_same_prompts(tmp_path):
    a = run_folder(tmp_path / "a", A, {"ppo": [0, 1]})
    w2 = run_folder(tmp_path / "w2", B, {"ppo": [0, 1]}, world=2)
    dev = run_folder(tmp_path / "dev", B, {"ppo": [0, 1]}, split="dev")
    n4 = run_folder(tmp_path / "n4", {k: v + v[:2] for k, v in B.items()}, {"ppo": [0, 1]}, n_prompts=4)
    cases = [(w2, "a has world_seed 1 and .*w2 has 2"), (dev, "has eval_split 'test' and .*dev has 'dev'"),
             (n4, "a/eval/eval.json has n_prompts 3 and .*n4/eval/eval.json has 4"),
             (str(tmp_path / "absent"), "absent/report.json: not found")]
    for other, message in cases:
        with pytest.raises(UserError, match=message):
            compare_runs(a, other)


def test_pipeline_compare_prints_and_writes(tmp_path):
    a = run_folder(tmp_path / "a", A, {"ppo": [0.15, 0.25]})
    b = run_folder(tmp_path / "b", B, {"ppo": [0.05, 0.15]})
    out = tmp_path / "cmp"
    r = subprocess.run([sys.executable, "pipeline.py", f"--compare={a},{b}", f"--out_dir={out}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    row = "| PPO | +0.200 [+0.150, +0.250] | +0.100 [+0.050, +0.150] | +0.100 [+0.000, +0.300] | no |"
    assert row in r.stdout
    saved = json.loads((out / "compare.json").read_text())
    assert (saved["a"], saved["b"]) == (a, b) and list(saved["splits"]) == ["single turns", "conversations"]
    r = subprocess.run([sys.executable, "pipeline.py", f"--compare={a}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "expected two run folders" in r.stderr
