"""The whole flow in miniature: `pipeline.py --quick` writes every stage and a report with finite
figures, a rerun skips finished stages, and chat.py talks to the result."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["pretrained", "sft", "ppo", "ppo_ptx", "dpo", "preferred_ft", "grpo", "best_of_4"]


def python(*args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **kw.pop("env", {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=kw.pop("timeout", 600), **kw)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "out"
    r = python("pipeline.py", "--quick", f"--out_dir={out}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


def test_every_stage_and_the_report_exist(quick_run):
    out, stdout = quick_run
    for stage in ("pretrain", "sft", "labels", "rm", "ppo", "ppo_ptx", "dpo", "preferred_ft", "grpo"):
        assert (out / stage / "summary.json").exists(), stage
    for stage in ("pretrain", "sft", "ppo", "ppo_ptx", "dpo", "preferred_ft", "grpo"):
        assert (out / stage / "model.pt").exists(), stage
    assert (out / "eval" / "eval.json").exists()
    assert "$ " in stdout and "train_ppo.py" in stdout          # every command is printed
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"models", "rm", "stage_seconds", "total_seconds", "quick", "world_seed",
                           "eval_split"}
    assert report["quick"] is True and report["world_seed"] == 0 and report["eval_split"] == "test"
    assert set(report["models"]) == set(MODELS)
    for name, m in report["models"].items():
        for key in ("gold_mean", "pretrain_val_loss", "eos_rate", "mean_len", "probe_gold_mean"):
            assert math.isfinite(m[key]), (name, key)
        assert 0 <= m["gold_mean"] <= 1
        lo, hi = m["gold_ci95"]
        assert lo <= m["gold_mean"] <= hi
        if name != "sft":   # paired against SFT: the gain is the difference of the means, inside its interval
            assert m["gain_vs_sft"] == pytest.approx(m["gold_mean"] - report["models"]["sft"]["gold_mean"])
            assert m["gain_ci95"][0] <= m["gain_vs_sft"] <= m["gain_ci95"][1]
            assert len(m["win_rate_ci95"]) == 2 and m["probe_gain_vs_sft"] is not None
    for name in ("ppo", "ppo_ptx", "dpo", "preferred_ft", "grpo"):
        assert math.isfinite(report["models"][name]["kl_to_sft"])
        assert report["models"][name]["train_seconds"] > 0                  # quality beside compute
    assert set(report["dpo_implicit_reward"]) == {"accuracy", "gold_accuracy", "on_policy_gold_accuracy",
                                                  "spearman"}
    for key in ("accuracy", "labeler_agreement", "ceiling", "spearman", "spearman_within_prompt",
                "labels_spearman_within_prompt"):
        assert report["rm"][key] is None or math.isfinite(report["rm"][key]), key
    assert math.isfinite(report["rm"]["accuracy"])
    md = (out / "report.md").read_text()
    assert "| sft |" in md and "![pretrain" in md and "Reward model" in md


def test_rerun_skips_finished_stages(quick_run):
    out, _ = quick_run
    r = python("pipeline.py", "--quick", f"--out_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("stage complete, skipped") == 11


def test_chat_answers_once_and_interactively(quick_run):
    out, _ = quick_run
    r = python("chat.py", f"--model={out}/sft", "--prompt=计算2+2", "--max_new_tokens=8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != ""
    r = python("chat.py", "--compare", f"{out}/sft", f"{out}/ppo", "--max_new_tokens=8", "--temperature=0",
               input="What is 3 + 5?\n\nReverse the word cat.\n/quit\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(f"[{out}/sft]") == 2 and r.stdout.count(f"[{out}/ppo]") == 2
    # Ctrl-D ends the session cleanly too
    r = python("chat.py", f"--model={out}/ppo", "--max_new_tokens=4", input="hello\n")
    assert r.returncode == 0 and "Traceback" not in r.stderr


def test_a_full_run_never_reuses_a_quick_runs_stages(quick_run, tmp_path):
    """Without the marker a full run would skip every stage of a miniature and report its numbers as
    the real ones."""
    out, _ = quick_run
    before = (out / "report.md").read_text()
    r = python("pipeline.py", f"--out_dir={out}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "holds a --quick miniature's stages" in r.stderr
    assert (out / "report.md").read_text() == before and "stage complete" not in r.stdout
    # another world's stages: refused
    r = python("pipeline.py", "--quick", "--world_seed=1", f"--out_dir={out}")
    assert r.returncode == 2 and "holds the stages of world 0 and this is world 1" in r.stderr
    (tmp_path / "sft").mkdir()                                  # stage folders of unknown origin: refused too
    r = python("pipeline.py", "--quick", f"--out_dir={tmp_path}")
    assert r.returncode == 2 and "unknown kind of run" in r.stderr


def test_the_report_counts_mistakes_per_model(quick_run):
    out, _ = quick_run
    report = json.loads((out / "report.json").read_text())
    for name in MODELS:
        m = report["models"][name]
        assert m["samples_per_prompt"] == 2 and m["n_responses"] == 32
        assert set(m["mistake_counts"]) == {"preamble", "rambling", "repeat_question", "format",
                                            "wrong_language", "wrong_answer", "refusal", "off_topic",
                                            "earlier_answer", "forgot_system"}
    assert (out / "mistakes.png").exists() and "## What RLHF changed" in (out / "report.md").read_text()
    # wrong answers by task kind: the kinds add up to the model's wrong answers; the cut is against SFT
    for name in MODELS:
        m = report["models"][name]
        by_kind = {k: v for k, v in m["wrong_by_kind"].items() if "+" not in k}
        assert sum(by_kind.values()) == m["mistake_counts"]["wrong_answer"]
        assert (m["wrong_cut_vs_sft"] is None) == (name == "sft")
    assert "by task kind" in (out / "report.md").read_text()


def test_the_report_shows_conversations_apart(quick_run):
    """The same models on the dialogue split: its own table (with the follow-ups' share answered right),
    gains paired against SFT on the same conversations, and its own mistake counts."""
    out, _ = quick_run
    evaluation = json.loads((out / "eval_dialogue" / "eval.json").read_text())
    assert evaluation["split"] == "dialogue_test" and evaluation["n_probe_prompts"] == 0
    report = json.loads((out / "report.json").read_text())
    dialogue = report["dialogue"]
    assert dialogue["split"] == "dialogue_test" and set(dialogue["models"]) == set(MODELS)
    for name, m in dialogue["models"].items():
        assert m["n_responses"] == 32 and 0 <= m["follow_up_right"] <= 1
        lo, hi = m["follow_up_right_ci95"]
        assert lo <= m["follow_up_right"] <= hi
        if name != "sft":
            assert m["gain_vs_sft"] == pytest.approx(m["gold_mean"] - dialogue["models"]["sft"]["gold_mean"])
    text = (out / "report.md").read_text()
    assert "## Conversations" in text and "## What RLHF changed in conversations" in text


def test_the_report_draws_its_own_frontier(quick_run):
    """frontier.png from the run's own report.json: one point per row but the pretrained model's, at √ of the
    report's KL to SFT (0 where the sampled estimate fell below 0), linked from report.md."""
    from minigpt.frontier import frontier_points

    out, _ = quick_run
    report = json.loads((out / "report.json").read_text())
    points = frontier_points([report])
    assert [p["name"] for p in points] == [n for n in MODELS if n != "pretrained"]
    for p in points:
        m = report["models"][p["name"]]
        assert p["d"] == pytest.approx(math.sqrt(max(m["kl_to_sft"], 0.0)))
        assert p["gain"] == (0.0 if p["name"] == "sft" else m["gain_vs_sft"])
    assert points[-1]["kl_bound_d"] == pytest.approx(math.sqrt(math.log(4) - 3 / 4))    # best-of-4
    assert (out / "frontier.png").stat().st_size > 10_000
    assert "](frontier.png)" in (out / "report.md").read_text()


def test_every_step_through_command_runs_on_the_quick_outputs(quick_run, tmp_path):
    """README's "Step through it": each stage's command (without the debugger) completes on the quick run's
    outputs, its first breakpoint is a line of that script, and under pdb the run stops there (one `n` later,
    the loss is there)."""
    out, stdout = quick_run
    assert "python -m pdb -c 'b train_sft.py:" in stdout                      # the quick pipeline prints them
    sys.path.insert(0, ROOT)
    import pipeline
    commands = pipeline.step_through_commands(str(out), str(tmp_path))
    assert set(commands) == set(pipeline.STEP_THROUGH)
    for stage, (args, breakpoint) in commands.items():
        r = python(*args, env={"OMP_NUM_THREADS": "1"}, timeout=120)
        assert r.returncode == 0, (stage, r.stdout[-1500:], r.stderr[-1500:])
    args, breakpoint = commands["sft"]
    r = python("-m", "pdb", "-c", f"b {breakpoint}", "-c", "c", *args, input="n\np float(loss) > 0\nquit\n",
               timeout=120)
    file, line = breakpoint.split(":")
    assert f"{file}({line})" in r.stdout and "True" in r.stdout, r.stdout[-2000:]


def test_the_vscode_launch_configurations_are_the_step_through_commands():
    sys.path.insert(0, ROOT)
    import pipeline
    text = open(os.path.join(ROOT, ".vscode", "launch.json"), encoding="utf-8").read()
    launch = json.loads("\n".join(line for line in text.splitlines() if not line.startswith("//")))
    got = [[c["program"].replace("${workspaceFolder}/", ""), *c["args"]] for c in launch["configurations"]]
    assert got == [args for args, _ in pipeline.step_through_commands().values()], \
        "run `python pipeline.py --step_through_docs`"


def test_the_readme_lists_the_step_through_commands_of_this_code():
    """README's "Step through it" shows breakpoint line numbers: they must be those of the current scripts."""
    sys.path.insert(0, ROOT)
    import pipeline
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    for args, breakpoint in pipeline.step_through_commands().values():
        assert f"python -m pdb -c 'b {breakpoint}' -c c {' '.join(args)}\n" in readme, \
            f"{breakpoint}: run `python pipeline.py --step_through_docs`"


def test_each_stage_command_carries_each_flag_once():
    import pipeline

    cfg = pipeline.Config(preset="quick", out_dir="o")
    commands = pipeline.stage_commands(cfg)
    for stage, cmd in commands.items():
        keys = [a.split("=", 1)[0] for a in cmd[1:]]
        assert len(keys) == len(set(keys)), (stage, cmd)
    grpo = commands["grpo"]
    # GRPO is its own script, run at its defaults plus the preset's shrinking flags
    assert grpo[1:5] == ["train_grpo.py", "--sft=o/sft", "--rm=o/rm", "--out_dir=o/grpo"]
    assert grpo[-5:] == ["--dtype=auto", "--iterations=2", "--batch_size=2", "--minibatch_size=4",
                         "--val_prompts=8"]
    # the pipeline owns its folders: every training stage may overwrite an unfinished attempt; label.py and
    # evaluate.py have no such flag
    assert [s for s, cmd in commands.items() if "--force" in cmd] == \
        ["pretrain", "sft", "rm", "ppo", "ppo_ptx", "dpo", "preferred_ft", "grpo", "ppo_verifier"]
    assert pipeline.merge_flags(["a.py", "--x=1", "--y=2"], ["--y=3", "--z=4", "--x=5"]) == \
        ["a.py", "--x=5", "--y=3", "--z=4"]


def test_the_verifier_stage_runs_only_when_asked():
    import pipeline

    plain, asked = pipeline.Config(out_dir="o"), pipeline.Config(out_dir="o", verifier=True)
    assert "ppo_verifier" not in pipeline.chosen(pipeline.STAGES, plain)
    assert pipeline.chosen(pipeline.STAGES, asked)[-3:] == ["ppo_verifier", "eval", "eval_dialogue"]
    for stage in ("eval", "eval_dialogue"):          # both evaluations hold the run when it is there
        models = {cfg.verifier: next(a for a in pipeline.stage_commands(cfg)[stage]
                                     if a.startswith("--models=")) for cfg in (plain, asked)}
        assert "ppo_verifier:o/ppo_verifier" in models[True] and "ppo_verifier" not in models[False]
    assert "--reward=verifier" in pipeline.stage_commands(asked)["ppo_verifier"]


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    import signal

    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "pipeline.py", "--quick", f"--out_dir={tmp_path / 'out'}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job inherits SIGINT ignored, and Python then keeps it
                            # ignored: set it back to the default
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:                       # the first stage's command: it is running
            if line.startswith("$ "):
                break
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.endswith("interrupted during stage pretrain; rerun the same command to continue: finished "
                           "stages are skipped\n")


def fake_stages(tmp_path, fail=()):
    """A stand-in command per stage: it writes 'start' and, 0.3 s later, 'end' with the time and its
    OMP_NUM_THREADS to <tmp_path>/times/<stage> (the stages in fail exit 1 instead of ending)."""
    import pipeline

    (tmp_path / "times").mkdir()
    code = ("import os, sys, time; p = sys.argv[1]; t = os.environ.get('OMP_NUM_THREADS'); "
            "open(p, 'w').write(f'start {time.time()} {t}\\n'); time.sleep(0.3); "
            "sys.exit(1) if sys.argv[2] == 'fail' else open(p, 'a').write(f'end {time.time()}\\n')")
    return {s: [sys.executable, "-c", code, str(tmp_path / "times" / s), "fail" if s in fail else "ok"]
            for s in pipeline.STAGES}


def times(tmp_path):
    out = {}
    for path in (tmp_path / "times").iterdir():
        lines = [line.split() for line in path.read_text().splitlines()]
        out[path.name] = dict(start=float(lines[0][1]), threads=lines[0][2],
                              end=float(lines[1][1]) if len(lines) > 1 else None)
    return out


def test_side_by_side_stages_wait_for_what_they_read(tmp_path):
    from types import SimpleNamespace

    import pipeline

    todo = [s for s in pipeline.SIDE_BY_SIDE if s != "ppo_verifier"]          # --verifier not asked
    cfg, seconds = SimpleNamespace(jobs=2, out_dir=str(tmp_path)), {}
    pipeline.run_side_by_side(todo, pipeline.STAGES, fake_stages(tmp_path), cfg, ROOT, seconds,
                              str(tmp_path / "seconds.json"))
    t = times(tmp_path)
    assert set(t) == set(todo) == set(seconds) and all(x["threads"] == "1" for x in t.values())
    for stage in todo:                             # each starts after every stage it reads has ended
        for need in pipeline.NEEDS[stage]:
            if need in todo:
                assert t[stage]["start"] >= t[need]["end"], (stage, need)
    for stage in todo:                             # never more than 2 at once
        at_once = [s for s in todo if t[s]["start"] <= t[stage]["start"] < t[s]["end"]]
        assert len(at_once) <= 2, at_once
    assert json.loads((tmp_path / "seconds.json").read_text()) == seconds
    assert (tmp_path / "logs" / "ppo.log").exists()


def test_a_failed_side_by_side_stage_stops_what_reads_it(tmp_path, capsys):
    from types import SimpleNamespace

    import pipeline

    todo = ["rm", "dpo", "preferred_ft", "ppo", "eval"]
    cfg, seconds = SimpleNamespace(jobs=2, out_dir=str(tmp_path)), {}
    with pytest.raises(pipeline.UserError, match="stage rm failed"):
        pipeline.run_side_by_side(todo, pipeline.STAGES, fake_stages(tmp_path, fail=("rm",)), cfg, ROOT,
                                  seconds, str(tmp_path / "seconds.json"))
    t = times(tmp_path)
    assert "ppo" not in t and "eval" not in t and t["rm"]["end"] is None     # nothing that reads rm started
    assert t["dpo"]["end"] is not None and set(seconds) <= {"dpo", "preferred_ft"}  # dpo, beside it, finished
    assert "rm failed (exit code 1)" in capsys.readouterr().out


def test_ctrl_c_waits_for_every_side_by_side_stage(tmp_path):
    import _thread
    import threading
    from types import SimpleNamespace

    import pipeline

    cfg = SimpleNamespace(jobs=2, out_dir=str(tmp_path))
    threading.Timer(0.1, _thread.interrupt_main).start()      # Ctrl-C while rm and dpo run
    with pytest.raises(KeyboardInterrupt) as stopped:
        pipeline.run_side_by_side(["rm", "dpo", "ppo"], pipeline.STAGES, fake_stages(tmp_path), cfg, ROOT, {},
                                  str(tmp_path / "seconds.json"))
    t = times(tmp_path)
    assert set(stopped.value.args) == {"rm", "dpo"} and set(t) == {"rm", "dpo"}   # ppo never started
    assert all(x["end"] is not None for x in t.values())                        # both were waited for
