"""The frontier (minigpt/frontier.py): points hand-computed from tiny report dicts of one and of three worlds,
the reports' checks, and `pipeline.py --frontier` writing the figure."""

import json
import os
import subprocess
import sys

import pytest

from minigpt.cli import UserError
from minigpt.frontier import frontier_points, label, load_reports, write_frontier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def row(kl, gain=None, ci=None, **more):
    return dict(kl_to_sft=kl, gain_vs_sft=gain, gain_ci95=ci, **more)


def report(world, models, split="test", preset=None):
    return {"world_seed": world, "eval_split": split, "preset": preset, "models": models}


def test_one_run_its_own_numbers():
    r = report(1, {"pretrained": row(31.0, -0.4, [-0.5, -0.3]),        # where SFT started: not a point
                   "sft": row(0.0),
                   "ppo": row(0.25, 0.1, [0.05, 0.15]),
                   "dpo": row(-0.01, 0.2, [0.1, 0.3]),                  # below 0 by sampling noise: d = 0
                   "best_of_4": row(0.36, 0.05, [0.0, 0.1], kl_bound=0.64),
                   "verifier": row(1.44, 0.3, [0.2, 0.4]),              # a row the code never heard of
                   "grpo": row(None, 0.1, [0.0, 0.2])})                 # no KL: no point
    points = {p["name"]: p for p in frontier_points([r])}
    assert list(points) == ["sft", "ppo", "dpo", "best_of_4", "verifier"]
    assert points["sft"] == dict(name="sft", label="SFT", worlds=[1], d=0.0, d_range=[0.0, 0.0], gain=0.0,
                                 gain_range=[0.0, 0.0], ci95=[0.0, 0.0], kl_bound_d=None)
    ppo = points["ppo"]
    assert (ppo["d"], ppo["gain"], ppo["ci95"], ppo["gain_range"]) == (0.5, 0.1, [0.05, 0.15], [0.1, 0.1])
    assert points["dpo"]["d"] == 0.0 and points["dpo"]["ci95"] == [0.1, 0.3]
    bon = points["best_of_4"]
    # the report's own (sampled) KL places the point; √0.64 = 0.8 is the bound drawn beside it
    assert bon["d"] == pytest.approx(0.6) and bon["kl_bound_d"] == pytest.approx(0.8)
    assert bon["label"] == "best-of-4 by RM"
    assert points["verifier"]["label"] == "verifier" and points["verifier"]["d"] == pytest.approx(1.2)


def test_three_worlds_mean_range_and_the_span_of_their_intervals():
    reports = [report(1, {"sft": row(0.0), "ppo": row(0.25, 0.1, [0.05, 0.15])}),
               report(2, {"sft": row(0.0), "ppo": row(1.0, 0.2, [0.12, 0.28]),
                          "rloo": row(0.09, 0.12, [0.08, 0.16])}),
               report(3, {"sft": row(0.0), "ppo": row(2.25, 0.3, [0.2, 0.45])})]
    points = {p["name"]: p for p in frontier_points(reports)}
    assert list(points) == ["sft", "ppo", "rloo"]       # a row only one world has comes after, with its world
    ppo = points["ppo"]
    assert ppo["worlds"] == [1, 2, 3]
    assert ppo["d"] == pytest.approx((0.5 + 1.0 + 1.5) / 3) and ppo["d_range"] == [0.5, 1.5]
    assert ppo["gain"] == pytest.approx(0.2) and ppo["gain_range"] == [0.1, 0.3]
    assert ppo["ci95"] == [0.05, 0.45]                  # lowest low, highest high of the three intervals
    rloo = points["rloo"]
    assert rloo["worlds"] == [2] and rloo["label"] == "RLOO"
    assert rloo["d"] == pytest.approx(0.3) and rloo["ci95"] == [0.08, 0.16]
    assert points["sft"]["worlds"] == [1, 2, 3] and points["sft"]["gain"] == 0.0


def test_labels():
    assert [label(n) for n in ("ppo_ptx", "preferred_ft", "best_of_16", "best_of_n", "verifier")] == \
        ["PPO-ptx", "Preferred-FT", "best-of-16 by RM", "best_of_n", "verifier"]


def write(folder, obj):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "report.json"), "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    return str(folder)


def test_the_reports_are_checked(tmp_path):
    one = write(tmp_path / "w1", report(1, {"sft": row(0.0)}))
    again = write(tmp_path / "w1again", report(1, {"sft": row(0.0)}))
    dev = write(tmp_path / "w2dev", report(2, {"sft": row(0.0)}, split="dev"))
    quick = write(tmp_path / "w3quick", report(3, {"sft": row(0.0)}, preset="quick"))
    broken = write(tmp_path / "broken", '{\n  "models": {,\n}')
    no_split = write(tmp_path / "nosplit", {"world_seed": 4, "models": {"sft": row(0.0)}})
    no_sft = write(tmp_path / "nosft", report(5, {"ppo": row(1.0, 0.1, [0, 0.2])}))
    cases = [([one, again], "both world 1"), ([one, dev], "has eval_split 'test' and"),
             ([one, quick], "has preset None and"), ([broken], "broken/report.json: line 2: not JSON"),
             ([no_split], "no field 'eval_split'"), ([no_sft], "no 'sft' row"),
             ([str(tmp_path / "absent")], "absent/report.json: not found")]
    for folders, message in cases:
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            load_reports(folders)
    seven = write(tmp_path / "w7", report(7, {"sft": row(0.0)}))
    assert [r["world_seed"] for r in load_reports([one, seven])] == [1, 7]


def test_pipeline_frontier_writes_the_figure_and_its_numbers(tmp_path):
    folders = [write(tmp_path / f"w{w}", report(w, {"pretrained": row(30.0, -0.4, [-0.5, -0.3]),
                                                    "sft": row(0.0), "dpo": row(k, g, ci)}))
               for w, k, g, ci in ((1, 1.0, 0.2, [0.1, 0.3]), (2, 4.0, 0.1, [0.0, 0.2]))]
    out = tmp_path / "fig"
    r = subprocess.run([sys.executable, "pipeline.py", f"--frontier={','.join(folders)}", f"--out_dir={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "frontier.png").stat().st_size > 10_000 and not list(out.glob("*.tmp*"))
    saved = json.loads((out / "frontier.json").read_text())
    assert [p["name"] for p in saved["points"]] == ["sft", "dpo"]
    dpo = saved["points"][1]
    assert (dpo["d"], dpo["gain"], dpo["ci95"]) == (1.5, pytest.approx(0.15), [0.0, 0.3])
    assert [run["world_seed"] for run in saved["runs"]] == [1, 2]
    assert "DPO" in r.stdout and "+0.150" in r.stdout
    # the same world twice: one line, exit 2, nothing written
    r = subprocess.run([sys.executable, "pipeline.py", f"--frontier={folders[0]},{folders[0]}",
                        f"--out_dir={tmp_path / 'none'}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "both world 1" in r.stderr
    assert not (tmp_path / "none").exists()


def test_write_frontier_of_one_run(tmp_path):
    folder = write(tmp_path / "w1", report(1, {"sft": row(0.0), "ppo": row(0.25, 0.1, [0.05, 0.15])}))
    points = write_frontier(str(tmp_path / "out"), [folder])
    assert (tmp_path / "out" / "frontier.png").exists() and [p["d"] for p in points] == [0.0, 0.5]
