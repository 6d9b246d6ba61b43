"""The whole InstructGPT recipe in one command, each stage run by its own script.

    python pipeline.py            # ~20 minutes on 2 CPU cores; then read out/report.md
    python pipeline.py --preset=small  # the default model on fewer steps and prompts: a few minutes, in out/small;
                                       # its models answer in the world's shape, its report shows each stage's direction
    python pipeline.py --quick         # a miniature of every stage in under a minute, in out/quick (what the tests run)
    python pipeline.py --force=rm # rerun from the reward model on (later stages too)

    python pipeline.py --world_seed=1 --seed=1   # another world: its own splits and probe facts (report on these)
    python pipeline.py --eval_split=dev           # evaluate on the dev split, where defaults are chosen

    tokenizer + pretraining -> SFT -> comparisons -> reward model -> PPO -> PPO-ptx -> DPO -> Preferred-FT -> GRPO
    -> evaluation -> report   (DPO and GRPO, what came after InstructGPT, on the same comparisons and reward model;
                               Preferred-FT, SFT on each ranking's best response: the baseline they must beat)

Defaults are chosen on world 0's dev split; the numbers to believe are the test splits of other worlds.

Every command is printed before it runs, so any stage can be rerun by hand. A stage whose folder
holds its last file (summary.json; eval.json for evaluation) is complete and is skipped, so an
interrupted pipeline continues where it stopped.
"""

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from minigpt.checkpoint import write_json, write_text
from minigpt.evaluation import bootstrap_ci95, mean_gain
from minigpt.cli import UserError, check, run
from minigpt.training import check_dtype

STAGES = ["pretrain", "sft", "labels", "rm", "ppo", "ppo_ptx", "dpo", "preferred_ft", "grpo", "eval"]
RLHF = ["ppo", "ppo_ptx", "dpo", "preferred_ft", "grpo"]   # the models trained from the comparisons, against SFT

# Flags that shrink each stage: --quick, a miniature (a tiny model, a few steps: numbers mean nothing, what the tests
# run); --preset=small, the default model with fewer steps and prompts (every stage's direction, in a few minutes).
QUICK = {
    "pretrain": ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=96", "--vocab_size=400",
                 "--tokenizer_chars=60000", "--max_steps=30", "--batch_size=8", "--eval_interval=15",
                 "--eval_batches=2", "--log_interval=10"],
    "sft": ["--max_steps=20", "--batch_size=8", "--eval_interval=10", "--eval_prompts=8"],
    "labels": ["--n_prompts=24", "--k_policy=2", "--k_demo=2"],
    "rm": ["--batch_size=4", "--bias_prompts=16"],
    "ppo": ["--iterations=2", "--batch_size=8", "--minibatch_size=4", "--val_prompts=8"],
    "ppo_ptx": ["--iterations=2", "--batch_size=8", "--minibatch_size=4", "--val_prompts=8"],
    "dpo": ["--batch_size=4", "--kl_prompts=8", "--eval_interval=5"],
    "preferred_ft": ["--max_steps=5", "--batch_size=8", "--eval_interval=5", "--eval_prompts=8"],
    "grpo": ["--iterations=2", "--batch_size=2", "--minibatch_size=4", "--val_prompts=8"],
    "eval": ["--n_prompts=16", "--samples_per_prompt=2", "--val_tokens=2048"],
}
SMALL = {
    "pretrain": ["--max_steps=1200", "--eval_interval=400", "--log_interval=50"],
    "sft": ["--max_steps=300", "--eval_interval=100", "--eval_prompts=32"],
    "labels": ["--n_prompts=600"],
    "rm": ["--eval_prompts=32"],
    "ppo": ["--iterations=20", "--val_prompts=32", "--val_samples=2", "--sample_interval=0"],
    "ppo_ptx": ["--iterations=20", "--val_prompts=32", "--val_samples=2", "--sample_interval=0"],
    "dpo": ["--kl_prompts=32"],
    "preferred_ft": ["--eval_prompts=32"],
    "grpo": ["--val_prompts=32", "--val_samples=2", "--sample_interval=0"],
    "eval": ["--n_prompts=100", "--samples_per_prompt=2"],
}
PRESETS = {"quick": QUICK, "small": SMALL}
# "Step through it": each stage on the quick run's outputs with tiny settings, for a debugger. The first breakpoint
# goes on the line holding the snippet (where the loss is computed; for the labels and the evaluation, where the
# judge speaks); its number is looked up in the source when printed, so it cannot go stale.
STEP_THROUGH = {
    "pretrain": (["train_pretrain.py", "--out_dir={d}/pretrain", "--force", "--n_layer=1", "--n_head=2",
                  "--n_embd=32", "--block_size=64", "--vocab_size=300", "--tokenizer_chars=20000",
                  "--max_steps=3", "--batch_size=4", "--eval_interval=3", "--eval_batches=1"],
                 "loss = sft_loss(logits.float()"),
    "sft": (["train_sft.py", "--init={q}/pretrain", "--out_dir={d}/sft", "--force", "--max_steps=3",
             "--batch_size=4", "--eval_interval=3", "--eval_prompts=4"], "loss = sft_loss(logits.float()"),
    "labels": (["label.py", "--policy={q}/sft", "--out_dir={d}/labels", "--n_prompts=4", "--k_policy=2",
                "--k_demo=2"], "order = labeler.rank("),
    "rm": (["train_rm.py", "--sft={q}/sft", "--labels={q}/labels", "--out_dir={d}/rm", "--force",
            "--batch_size=4", "--epochs=1", "--bias_prompts=4", "--eval_interval=2", "--eval_prompts=4"],
           "loss, accuracy, _ = ranking_loss("),
    "ppo": (["train_ppo.py", "--sft={q}/sft", "--rm={q}/rm", "--out_dir={d}/ppo", "--force", "--iterations=1",
             "--batch_size=4", "--minibatch_size=2", "--val_prompts=4", "--max_new_tokens=8"],
            "loss, stats = ppo_loss("),
    "dpo": (["train_dpo.py", "--sft={q}/sft", "--labels={q}/labels", "--out_dir={d}/dpo", "--force",
             "--batch_size=4", "--epochs=1", "--kl_prompts=4", "--max_new_tokens=8"],
            "loss, accuracy, margin = ranking_dpo_loss(logps, [ref_train"),
    "grpo": (["train_grpo.py", "--sft={q}/sft", "--rm={q}/rm", "--out_dir={d}/grpo", "--force",
              "--iterations=1", "--batch_size=2", "--group_size=2", "--minibatch_size=2", "--val_prompts=4",
              "--max_new_tokens=8"], "loss, stats = grpo_loss("),
    "eval": (["evaluate.py", "--models=sft:{q}/sft,ppo:{q}/ppo", "--ref={q}/sft", "--rm={q}/rm",
              "--n_prompts=4", "--samples_per_prompt=1", "--val_tokens=512", "--json={d}/eval.json"],
             "gold = [world.gold_score(t, text)"),
}


def step_through_commands(quick_dir="out/quick", debug_dir="out/debug"):
    """stage -> (script and flags, "file:line" of the first breakpoint)."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = {}
    for stage, (args, snippet) in STEP_THROUGH.items():
        with open(os.path.join(here, args[0]), encoding="utf-8") as f:
            line = next(i for i, text in enumerate(f, 1) if snippet in text)
        out[stage] = ([a.format(q=quick_dir, d=debug_dir) for a in args], f"{args[0]}:{line}")
    return out


def write_step_through_docs(here):
    """Rewrite README's "Step through it" commands and .vscode/launch.json from STEP_THROUGH, with the breakpoint
    lines of the scripts as they are now (tests/test_pipeline.py fails until this is run after a script moves)."""
    commands = step_through_commands()
    readme_path = os.path.join(here, "README.md")
    readme = open(readme_path, encoding="utf-8").read()
    block = "".join(f"python -m pdb -c 'b {bp}' -c c {' '.join(args)}\n" for args, bp in commands.values())
    start = readme.index("```bash\npython -m pdb ") + len("```bash\n")
    end = readme.index("```", start)
    write_text(readme_path, readme[:start] + block + readme[end:])
    configurations = [{"name": f"{stage}: step through (after pipeline.py --quick)", "type": "debugpy",
                       "request": "launch", "program": "${workspaceFolder}/" + args[0], "args": args[1:],
                       "cwd": "${workspaceFolder}", "console": "integratedTerminal", "justMyCode": True}
                      for stage, (args, _) in commands.items()]
    header = ("// Generated from pipeline.STEP_THROUGH by `python pipeline.py --step_through_docs` (tests/test_pipeline.py\n"
              "// checks they agree). Run `python pipeline.py --quick` first; put the first breakpoint where README's\n"
              "// \"Step through it\" says (the line that computes the loss).\n")
    launch = json.dumps({"version": "0.2.0", "configurations": configurations}, indent=2)
    write_text(os.path.join(here, ".vscode", "launch.json"), header + launch + "\n")


# The file whose presence means a stage finished (every script writes it last).
DONE = {stage: "summary.json" for stage in STAGES} | {"eval": "eval.json"}


@dataclass
class Config:
    out_dir: str = field(default="", metadata={"help": "where every stage's folder and the report go (default: out, "
                                                      "or out/<preset>)"})
    preset: str = field(default="", metadata={"help": "small (the default model, fewer steps: a few minutes) or quick "
                                                      "(a miniature in under a minute); empty = the full run"})
    quick: bool = field(default=False, metadata={"help": "the same as --preset=quick"})
    force: str = field(default="", metadata={"help": f"rerun from this stage on: one of {', '.join(STAGES)}"})
    seed: int = field(default=1337, metadata={"help": "seed passed to every stage"})
    world_seed: int = field(default=0, metadata={"help": "the instruction world (its splits and probe facts), passed to "
                                                         "every stage; defaults were chosen on world 0's dev split"})
    eval_split: str = field(default="test", metadata={"help": "test (only reported) or dev (where defaults are chosen)"})
    ptx_coef: float = field(default=1.0, metadata={"help": "PPO-ptx pretraining-loss coefficient (gamma)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})
    dtype: str = field(default="auto", metadata={"help": "passed to every stage: auto (bf16 autocast where this device's "
                                                         "bf16 matmul is clearly faster), float32 or bfloat16"})
    step_through_docs: bool = field(default=False, metadata={
        "help": "only rewrite README's step-through commands and .vscode/launch.json from the scripts' current lines"})

    def validate(self):
        check(self.force in ("", *STAGES), f"--force={self.force}: expected one of {', '.join(STAGES)}")
        check(self.preset in ("", *PRESETS), f"--preset={self.preset}: expected one of {', '.join(PRESETS)} (or none)")
        check(not (self.quick and self.preset not in ("", "quick")), f"--quick and --preset={self.preset}: pick one")
        if self.quick:
            self.preset = "quick"
        check(self.eval_split in ("test", "dev"), f"--eval_split must be test or dev, got {self.eval_split!r}")
        check_dtype(self.dtype)


def stage_commands(cfg):
    o = cfg.out_dir
    common = [f"--seed={cfg.seed}", f"--world_seed={cfg.world_seed}", f"--device={cfg.device}", f"--dtype={cfg.dtype}"]
    models = f"pretrained:{o}/pretrain,sft:{o}/sft," + ",".join(f"{m}:{o}/{m}" for m in RLHF)
    commands = {
        "pretrain": ["train_pretrain.py", f"--out_dir={o}/pretrain"],
        "sft": ["train_sft.py", f"--init={o}/pretrain", f"--out_dir={o}/sft"],
        "labels": ["label.py", f"--policy={o}/sft", f"--out_dir={o}/labels"],
        "rm": ["train_rm.py", f"--sft={o}/sft", f"--labels={o}/labels", f"--out_dir={o}/rm"],
        "ppo": ["train_ppo.py", f"--sft={o}/sft", f"--rm={o}/rm", f"--out_dir={o}/ppo"],
        "ppo_ptx": ["train_ppo.py", f"--sft={o}/sft", f"--rm={o}/rm", f"--out_dir={o}/ppo_ptx",
                    f"--ptx_coef={cfg.ptx_coef}"],
        "dpo": ["train_dpo.py", f"--sft={o}/sft", f"--labels={o}/labels", f"--out_dir={o}/dpo"],
        # Preferred-FT: DPO's learning rate and epochs, on the same rankings' best responses
        "preferred_ft": ["train_sft.py", f"--init={o}/sft", f"--preferred={o}/labels", f"--out_dir={o}/preferred_ft",
                         "--lr=1e-4", "--epochs=2", "--warmup_steps=10", "--eval_interval=50"],
        # GRPO at its defaults: 16 prompts x 4 samples = PPO's 64 responses per iteration, lr 3e-5, 30 iterations
        # (why not PPO's lr: train_grpo.py's Config)
        "grpo": ["train_grpo.py", f"--sft={o}/sft", f"--rm={o}/rm", f"--out_dir={o}/grpo"],
        "eval": ["evaluate.py", f"--models={models}", "--baseline=sft", f"--split={cfg.eval_split}", f"--ref={o}/sft",
                 f"--rm={o}/rm", "--best_of=4", f"--json={o}/eval/eval.json"],
    }
    # The pipeline owns its stage folders: a stage runs only when it had not finished, so its training script
    # may overwrite what an interrupted attempt left there.
    for stage in ("pretrain", "sft", "rm", *RLHF):
        commands[stage].append("--force")
    shrink = PRESETS.get(cfg.preset, {})
    return {s: [sys.executable, *merge_flags(cmd, common + shrink.get(s, []))] for s, cmd in commands.items()}


def merge_flags(args, extra):
    """args then extra, each --key once: a later --key=value replaces the earlier one in place, so the printed
    command reads as what runs (a stage's own --lr=1e-4 and a preset's --lr=3e-5 would both be shown)."""
    out = list(args)
    for flag in extra:
        key = flag.split("=", 1)[0]
        at = [i for i, a in enumerate(out) if a.split("=", 1)[0] == key]
        if at:
            out[at[0]] = flag
        else:
            out.append(flag)
    return out


def check_kind_of_run(cfg):
    """A miniature's stages must never be taken for the real run's (or the reverse), nor one world's for another's:
    out_dir/pipeline.json says which kind of run wrote the folder, and a folder of another kind is refused."""
    path = os.path.join(cfg.out_dir, "pipeline.json")
    if os.path.exists(path):
        with open(path) as f:
            was = json.load(f)
        was_preset = was.get("preset", "quick" if was.get("quick") else "")
        if was_preset != cfg.preset:
            kinds = {"quick": "a --quick miniature", "small": "a --preset=small run", "": "a full run"}
            raise UserError(f"{cfg.out_dir} holds {kinds[was_preset]}'s stages and this is {kinds[cfg.preset]}: "
                            "use another --out_dir, or delete that folder")
        if was.get("world_seed", 0) != cfg.world_seed:
            raise UserError(f"{cfg.out_dir} holds the stages of world {was.get('world_seed', 0)} and this is world "
                            f"{cfg.world_seed}: use another --out_dir, or delete that folder")
        if was.get("dtype", "auto") != cfg.dtype:
            raise UserError(f"{cfg.out_dir} holds stages run with --dtype={was.get('dtype', 'auto')} and this run has "
                            f"--dtype={cfg.dtype}: use another --out_dir, or delete that folder")
    elif any(os.path.isdir(os.path.join(cfg.out_dir, s)) for s in STAGES):
        raise UserError(f"{cfg.out_dir} holds stage folders of an unknown kind of run (no pipeline.json): "
                        "use another --out_dir, or delete them")
    write_json(path, {"preset": cfg.preset, "world_seed": cfg.world_seed, "dtype": cfg.dtype})


def run_stage(cmd, cwd):
    """Run one stage's command -> its exit code. On Ctrl-C, wait for the stage to end: the terminal's SIGINT
    reaches it too (one process group), and it saves its last.pt on the way out; subprocess.run would kill it
    0.25 s later, maybe mid-save."""
    proc = subprocess.Popen(cmd, cwd=cwd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        while proc.poll() is None:
            try:
                proc.wait()
            except KeyboardInterrupt:   # a second Ctrl-C: still wait, never a traceback
                pass
        raise


def main(cfg):
    here = os.path.dirname(os.path.abspath(__file__))
    if cfg.step_through_docs:
        return write_step_through_docs(here)
    cfg.out_dir = cfg.out_dir or (f"out/{cfg.preset}" if cfg.preset else "out")
    os.makedirs(cfg.out_dir, exist_ok=True)
    check_kind_of_run(cfg)
    timing_path = os.path.join(cfg.out_dir, "stage_seconds.json")
    seconds = json.load(open(timing_path)) if os.path.exists(timing_path) else {}
    forced = STAGES[STAGES.index(cfg.force):] if cfg.force else []
    commands = stage_commands(cfg)
    t_start = time.time()
    stage = STAGES[0]
    try:
        for i, stage in enumerate(STAGES, 1):
            folder = os.path.join(cfg.out_dir, stage)
            print(f"\n{'=' * 78}\n[{i}/{len(STAGES) + 1}] {stage}\n{'=' * 78}", flush=True)
            done = os.path.join(folder, DONE[stage])
            if os.path.exists(done) and stage not in forced:
                print(f"{done} exists: stage complete, skipped (--force={stage} reruns it)")
                continue
            print("$ " + " ".join(shlex.quote(c) for c in commands[stage]), flush=True)
            t0 = time.time()
            returncode = run_stage(commands[stage], here)
            if returncode != 0:
                raise UserError(f"stage {stage} failed (exit code {returncode}); fix it and rerun: "
                                "finished stages are skipped")
            seconds[stage] = round(time.time() - t0, 1)
            write_json(timing_path, seconds)
    except KeyboardInterrupt:
        print(f"\ninterrupted during stage {stage}; rerun the same command to continue: finished stages are "
              "skipped", file=sys.stderr)
        sys.exit(130)
    print(f"\n{'=' * 78}\n[{len(STAGES) + 1}/{len(STAGES) + 1}] report\n{'=' * 78}")
    write_report(cfg.out_dir, seconds, cfg)
    total = sum(seconds.values())
    print(f"\n{'stage':>12} {'seconds':>8} {'share':>6}")
    for stage, t in seconds.items():
        print(f"{stage:>12} {t:8.0f} {t / max(total, 1e-9):6.0%}")
    print(f"pipeline done in {time.time() - t_start:.0f}s (stages: {total:.0f}s in all); read {cfg.out_dir}/report.md")
    if cfg.preset == "quick":
        print("\nStep through any stage in a debugger, on these outputs with tiny settings (c = run to the breakpoint, "
              "n = next line, s = step into, p x = print x):")
        for stage, (args, breakpoint) in step_through_commands(cfg.out_dir).items():
            print(f"  {stage:>8}: python -m pdb -c 'b {breakpoint}' -c c {' '.join(args)}")


RUN_KINDS = {"": "with the defaults", "quick": "--quick (a miniature: numbers mean nothing)",
             "small": "--preset=small (the default model with fewer steps and prompts: directions, not sizes)"}


def _fmt(x, spec=".3f"):
    return "–" if x is None else format(x, spec)


def _ci(pair, spec=".3f"):
    return "" if not pair or None in pair else f"[{format(pair[0], spec)}, {format(pair[1], spec)}]"


def git_commit(here):
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True).stdout.strip() or None
    except OSError:
        return None


def mistake_section(out_dir, models):
    """'What RLHF changed': how many sampled answers of each model show each kind of mistake (minigpt.judge.mistakes),
    as a table and a bar chart (out_dir/mistakes.png)."""
    names = [n for n in ("sft", *RLHF, "best_of_4") if models.get(n, {}).get("mistake_counts")]
    if not names:
        return []
    kinds = list(models[names[0]]["mistake_counts"])
    lines = ["", "## What RLHF changed", "",
             f"Sampled answers showing each kind of mistake ({models[names[0]]['n_responses']} answers per model; "
             "an answer can show two):", "",
             "| mistake | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(str(models[n]["mistake_counts"][k]) for n in names) + " |" for k in kinds]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar([x + i * width for x in range(len(kinds))], [models[n]["mistake_counts"][k] for k in kinds], width,
               label=n)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(kinds))], [k.replace("_", " ") for k in kinds],
                  fontsize=8)
    ax.set_ylabel("sampled answers")
    ax.set_title("what RLHF changed: mistakes in the test answers")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "mistakes.png"), dpi=90)
    plt.close(fig)
    return lines + ["", "![what RLHF changed](mistakes.png)"]


def write_report(out_dir, seconds, cfg):
    """out/report.json (the figures) and out/report.md (the same, with plots and sample answers)."""
    quick, seed = cfg.preset == "quick", cfg.seed
    def load(*parts):
        path = os.path.join(out_dir, *parts)
        return json.load(open(path)) if os.path.exists(path) else {}

    evaluation, rm, ppo = load("eval", "eval.json"), load("rm", "summary.json"), load("ppo", "summary.json")
    dpo = load("dpo", "summary.json")
    models = {}
    for name, m in evaluation.get("models", {}).items():
        models[name] = {
            "gold_mean": m["gold_mean"], "gold_ci95": m["gold_ci95"], "per_task": m.get("per_task"),
            "gain_vs_sft": m.get("gain_vs_baseline"), "gain_ci95": m.get("gain_ci95"),
            "win_rate_vs_sft": evaluation.get("win_rates", {}).get(f"{name}_vs_sft"),
            "win_rate_ci95": m.get("win_rate_ci95"),
            "tie_rate_vs_sft": evaluation.get("tie_rates", {}).get(f"{name}_vs_sft"),
            "prompt_win_rate_vs_sft": evaluation.get("prompt_win_rates", {}).get(f"{name}_vs_sft"),
            "prompt_tie_rate_vs_sft": evaluation.get("prompt_tie_rates", {}).get(f"{name}_vs_sft"),
            "kl_to_sft": m.get("kl_to_ref"), "pretrain_val_loss": m.get("pretrain_val_loss"),
            "eos_rate": m.get("eos_rate"), "mean_len": m.get("mean_len"), "rm_score": m.get("rm_score"),
            "kl_bound": m.get("kl_bound"), "samples_per_prompt": m.get("samples_per_prompt"),
            "n_responses": m.get("n_responses"), "mistake_counts": m.get("mistake_counts"),
            "probe_gold_mean": m.get("probe_gold_mean"), "probe_gold_ci95": m.get("probe_gold_ci95"),
            "probe_gain_vs_sft": m.get("probe_gain_vs_baseline"), "probe_gain_ci95": m.get("probe_gain_ci95"),
            "probe_per_task": m.get("probe_per_task"),
            "train_seconds": seconds.get(name),
        }
    # The fair baseline: what DPO and PPO gain over SFT on the rankings' best answers (Preferred-FT) is what the
    # rejected answers taught. Paired answer by answer, with a 95% interval by bootstrap over prompts.
    scores, S = evaluation.get("scores") or {}, evaluation.get("samples_per_prompt") or 1
    if "preferred_ft" in scores:
        base = np.asarray(scores["preferred_ft"]).reshape(S, -1)
        for name in ("ppo", "ppo_ptx", "dpo", "grpo", "best_of_4"):
            if name in scores:
                a = np.asarray(scores[name]).reshape(S, -1)
                models[name]["gain_vs_preferred_ft"] = mean_gain(a, base)
                models[name]["gain_vs_preferred_ft_ci95"] = bootstrap_ci95(mean_gain, a, base, seed=seed)
    report = {
        "models": models,
        "rm": {k: rm.get(k) for k in ("accuracy", "labeler_agreement", "ceiling", "spearman", "spearman_within_prompt",
                                      "labels_spearman_within_prompt")},
        "rm_per_mistake_accuracy": rm.get("per_mistake_accuracy"),
        "rm_on_policy": {"pairs": rm.get("on_policy_pairs"), "reward_model": rm.get("on_policy_gold_accuracy"),
                         "sft_likelihood": (rm.get("sft_likelihood") or {}).get("on_policy_gold_accuracy")},
        # DPO's policy read as a reward model, r̂ = β·log(π/π_SFT), on the same held-out rankings
        "dpo_implicit_reward": {k: dpo.get(k) for k in ("accuracy", "gold_accuracy", "on_policy_gold_accuracy",
                                                        "spearman")} if dpo else None,
        "stage_seconds": seconds, "total_seconds": round(sum(seconds.values()), 1), "quick": quick,
        "preset": cfg.preset or None,
        "seed": seed, "world_seed": cfg.world_seed, "eval_split": evaluation.get("split"),
        "dtype": evaluation.get("dtype"),
        "ptx_coef": cfg.ptx_coef, "kl_coef": ppo.get("kl_coef"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        # the largest resident memory of any stage this process ran (Linux reports kilobytes)
        "peak_stage_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "commit": git_commit(os.path.dirname(os.path.abspath(__file__))),
    }
    write_json(os.path.join(out_dir, "report.json"), report)

    split = report["eval_split"]
    lines = ["# minigpt: what each stage of InstructGPT did", "",
             f"Run {RUN_KINDS[cfg.preset]} "
             f"on {report['machine']}, world {cfg.world_seed}, seed {seed}, dtype {report['dtype']}, "
             f"commit {report['commit']}, "
             f"{report['total_seconds']:.0f} s of stages, at most {report['peak_stage_rss_mb']} MB of memory. "
             f"Held-out **{split}** prompts of world {cfg.world_seed}"
             + (" (the split defaults are chosen on: development numbers)" if split == "dev" else "")
             + f", gold judge, temperature {evaluation.get('temperature')}, {evaluation.get('n_prompts')} prompts x "
             f"{evaluation.get('samples_per_prompt')} samples. Gains and win rates pair each answer with the SFT "
             "model's answer of the same number to the same prompt (win rates leave ties out); 95% intervals by "
             "bootstrap over prompts; 'by prompt' compares each prompt's mean.", "",
             "| model | gold [95% CI] | gain vs SFT [95% CI] | win rate vs SFT [95% CI] (ties) | by prompt (ties) "
             "| KL to SFT | pretrain val loss | EOS rate | mean length | training s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        lines.append(f"| {name} | {m['gold_mean']:.3f} {_ci(m['gold_ci95'])} | {_fmt(m['gain_vs_sft'], '+.3f')} "
                     f"{_ci(m['gain_ci95'])} | {_fmt(m['win_rate_vs_sft'], '.0%')} {_ci(m['win_rate_ci95'], '.0%')} "
                     f"({_fmt(m['tie_rate_vs_sft'], '.0%')}) | {_fmt(m['prompt_win_rate_vs_sft'], '.0%')} "
                     f"({_fmt(m['prompt_tie_rate_vs_sft'], '.0%')}) | {_fmt(m['kl_to_sft'], '.2f')} | "
                     f"{_fmt(m['pretrain_val_loss'])} | {_fmt(m['eos_rate'], '.0%')} | {_fmt(m['mean_len'], '.1f')} | "
                     f"{_fmt(m['train_seconds'], '.0f')} |")
    beyond = [(n, m) for n, m in models.items() if m.get("gain_vs_preferred_ft") is not None]
    if beyond:
        lines += ["", "Against the fair baseline, Preferred-FT (SFT on each ranking's best answer; what a method "
                      "gains beyond it is what the rejected answers taught): "
                  + ", ".join(f"{n} {m['gain_vs_preferred_ft']:+.3f} {_ci(m['gain_vs_preferred_ft_ci95'])}"
                              for n, m in beyond) + "."]
    probe_kinds = sorted({k for m in models.values() for k in (m.get("probe_per_task") or {})})
    if probe_kinds:
        lines += ["", "## Facts no later stage saw", "",
                  f"The probe split: {evaluation.get('n_probe_prompts')} translations of words that only the "
                  "pretraining text states (no SFT, ranking or PPO prompt mentions them). Does each method's gain "
                  "carry to facts it never saw?", "",
                  "| model | probe gold [95% CI] | gain vs SFT [95% CI] | " + " | ".join(probe_kinds) + " |",
                  "|---" * (3 + len(probe_kinds)) + "|"]
        for name, m in models.items():
            if m.get("probe_gold_mean") is not None:
                lines.append(f"| {name} | {m['probe_gold_mean']:.3f} {_ci(m['probe_gold_ci95'])} | "
                             f"{_fmt(m['probe_gain_vs_sft'], '+.3f')} {_ci(m['probe_gain_ci95'])} | "
                             + " | ".join(_fmt((m["probe_per_task"] or {}).get(k)) for k in probe_kinds) + " |")
    bound = [m["kl_bound"] for m in models.values() if m.get("kl_bound") is not None]
    if bound:
        lines += ["", f"Best-of-n's KL is estimated on the samples it chose from (short answers repeat); the usual "
                      f"formula log n − (n−1)/n = {bound[0]:.2f} is an upper bound."]
    lines += mistake_section(out_dir, models)
    r = report["rm"]
    lines += ["", "## Reward model", "",
              f"Held-out pairwise accuracy **{_fmt(r['accuracy'])}**, beside the agreement of two independent "
              f"simulated labellers {_fmt(r['labeler_agreement'])} and the labels' ceiling (noisy labels vs the "
              f"noise-free gold order) {_fmt(r['ceiling'])}. Spearman correlation of reward with gold score: "
              f"{_fmt(r['spearman'])} across all prompts, {_fmt(r['spearman_within_prompt'])} within a prompt "
              f"(the labels' order: {_fmt(r['labels_spearman_within_prompt'])}).", ""]
    if report["rm_per_mistake_accuracy"]:
        lines += ["| the worse response's mistake | RM accuracy |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in report["rm_per_mistake_accuracy"].items()] + [""]
    o = report["rm_on_policy"]
    if o["pairs"]:
        lines += [f"On the {o['pairs']} held-out pairs of two SFT samples (what PPO will see), the reward model "
                  f"orders {_fmt(o['reward_model'])} of them like the gold judge; the SFT model's own log-likelihood, "
                  f"used as the ranker, {_fmt(o['sft_likelihood'])}.", ""]
    d = report["dpo_implicit_reward"]
    if d:
        lines += [f"DPO's policy read as a reward model, β·log(π/π_SFT), on the same held-out rankings: accuracy "
                  f"{_fmt(d['accuracy'])}, vs gold order {_fmt(d['gold_accuracy'])}, on pairs of two SFT samples "
                  f"{_fmt(d['on_policy_gold_accuracy'])}, Spearman with gold {_fmt(d['spearman'])}.", ""]
    lines += ["## Time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in seconds.items()]
    lines += ["", "## Plots", ""]
    for folder in ("pretrain", "sft", "rm", *RLHF):
        pngs = sorted(f for f in os.listdir(os.path.join(out_dir, folder)) if f.endswith(".png")) \
            if os.path.isdir(os.path.join(out_dir, folder)) else []
        lines += [f"![{folder} {p[:-4]}]({folder}/{p})" for p in pngs]
    samples = evaluation.get("samples") or []
    if samples:
        lines += ["", "## The same prompts, answered by each model", ""]
        names = [n for n in ("sft", *RLHF) if n in models]
        lines += ["| prompt | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for s in samples[:12]:
            cells = [str(s["responses"].get(n, {}).get("text", "")).replace("|", "\\|").replace("\n", " ")
                     + f" ({s['responses'].get(n, {}).get('gold', float('nan')):.2f})" for n in names]
            lines.append(f"| {s['instruction'].replace(chr(10), ' ')} | " + " | ".join(cells) + " |")
        lines += ["", "Gold score of each answer in brackets."]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    run(main, Config)
