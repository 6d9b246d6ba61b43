"""The whole InstructGPT recipe in one command, each stage run by its own script.

    python pipeline.py            # ~14 minutes on 2 CPU cores; then read out/report.md
    python pipeline.py --preset=small  # the default model on fewer steps and prompts: a few minutes, in
                                       # out/small; its models answer in the world's shape, its report shows
                                       # each stage's direction
    python pipeline.py --quick         # a miniature of every stage in under a minute, in out/quick (what the
                                       # tests run)
    python pipeline.py --force=rm # rerun from the reward model on (later stages too)

    python pipeline.py --world_seed=1 --seed=1   # another world: its own splits and probe facts (report on
                                                 # these)
    python pipeline.py --eval_split=dev           # evaluate on the dev split, where defaults are chosen
    python pipeline.py --frontier=out/w1,out/w2 --out_dir=out/frontier   # one frontier figure over the
                                                 # runs of several worlds (each run draws its own)
    python pipeline.py --compare=out/w1,out/w1_fp32   # two runs of one world: their gains and differences
    python pipeline.py --verifier --force=ppo_verifier   # add PPO with a reward that checks sums and code
                                                         # (opt-in; on a finished run, reruns the evaluation)

    tokenizer + pretraining -> SFT -> comparisons -> reward model -> PPO -> PPO-ptx -> DPO -> Preferred-FT
    -> GRPO -> (PPO with --reward=verifier, if --verifier) -> evaluation (single turns, then conversations)
    -> report
        (DPO and GRPO, what came after InstructGPT, on the same comparisons and reward model; Preferred-FT,
        SFT on each ranking's best response: the baseline they must beat)

Defaults are chosen on world 0's dev split; the numbers to believe are the test splits of other worlds.

Pretraining, SFT and the labels run one after another on every core; from the reward model on, the stages
run side by side (--jobs at a time, each on one thread, its output in out/logs/<stage>.log), each as soon as
what it reads is there (NEEDS). Every command is printed before it runs, so any stage can be rerun by hand.
A stage whose folder holds its last file (summary.json; eval.json for evaluation) is complete and is skipped,
so an interrupted pipeline continues where it stopped.
"""

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

from minigpt.checkpoint import write_json, write_text
from minigpt.cli import UserError, check, run
from minigpt.compare import write_compare
from minigpt.frontier import table, write_frontier
from minigpt.report import write_report
from minigpt.training import check_dtype

STAGES = ["pretrain", "sft", "labels", "rm", "ppo", "ppo_ptx", "dpo", "preferred_ft", "grpo", "ppo_verifier",
          "eval", "eval_dialogue"]
# the models trained from the comparisons, against SFT
RLHF = ["ppo", "ppo_ptx", "dpo", "preferred_ft", "grpo", "ppo_verifier"]
# Stages that run only when their switch is on: PPO with --reward=verifier (--verifier) costs more than PPO
# (~180 s on 2 cores, plus ~15 s of evaluation), and the default run is near its 900 s budget already.
OPT_IN = {"ppo_verifier": "verifier"}


# What each stage reads: it starts once these have finished. From the reward model on, each stage reads the
# SFT model, the labels or the reward model; the two evaluations read every model.
NEEDS = {"pretrain": [], "sft": ["pretrain"], "labels": ["sft"], "rm": ["labels"], "dpo": ["labels"],
         "preferred_ft": ["labels"], "ppo": ["rm"], "ppo_ptx": ["rm"], "grpo": ["rm"], "ppo_verifier": ["rm"],
         "eval": RLHF, "eval_dialogue": RLHF}
# Side by side: these stages run --jobs at a time, each on one thread (OMP_NUM_THREADS=1). Small models
# sample token by token, so one thread each uses two cores better than two for one (a 15-iteration PPO twice:
# 52 s one after the other on 2 threads, 38 s side by side), and a stage's numbers depend neither on the core
# count nor on what runs beside it. Pretraining, SFT and the labels (large batches) run alone on every core.
SIDE_BY_SIDE = STAGES[STAGES.index("rm"):]


def chosen(stages, cfg):
    """The stages (or RLHF models) this run has: the opt-in ones only when their switch is on."""
    return [s for s in stages if s not in OPT_IN or getattr(cfg, OPT_IN[s])]

# Flags that shrink each stage: --quick, a miniature (a tiny model, a few steps: numbers mean nothing, what
# the tests run); --preset=small, the default model with fewer steps and prompts (every stage's direction,
# in a few minutes).
QUICK = {
    "pretrain": ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=96", "--vocab_size=400",
                 "--tokenizer_chars=60000", "--max_steps=30", "--batch_size=8", "--eval_interval=15",
                 "--eval_batches=2", "--log_interval=10"],
    "sft": ["--max_steps=20", "--batch_size=8", "--eval_interval=10", "--eval_prompts=8"],
    "labels": ["--n_prompts=24", "--k_policy=2", "--k_demo=2"],
    "rm": ["--batch_size=4", "--bias_prompts=16"],
    "ppo": ["--iterations=2", "--batch_size=8", "--minibatch_size=4", "--val_prompts=8"],
    "ppo_ptx": ["--iterations=2", "--batch_size=8", "--minibatch_size=4", "--val_prompts=8"],
    "ppo_verifier": ["--iterations=2", "--batch_size=8", "--minibatch_size=4", "--val_prompts=8"],
    "dpo": ["--batch_size=4", "--kl_prompts=8", "--eval_interval=5"],
    "preferred_ft": ["--max_steps=5", "--batch_size=8", "--eval_interval=5", "--eval_prompts=8"],
    "grpo": ["--iterations=2", "--batch_size=2", "--minibatch_size=4", "--val_prompts=8"],
    "eval": ["--n_prompts=16", "--samples_per_prompt=2", "--val_tokens=2048"],
    "eval_dialogue": ["--n_prompts=16", "--samples_per_prompt=2", "--val_tokens=2048"],
}
SMALL = {
    "pretrain": ["--max_steps=1200", "--eval_interval=400", "--log_interval=50"],
    "sft": ["--max_steps=300", "--eval_interval=100", "--eval_prompts=32"],
    "labels": ["--n_prompts=600"],
    "rm": ["--eval_prompts=32"],
    "ppo": ["--iterations=20", "--val_prompts=32", "--val_samples=2", "--sample_interval=0"],
    "ppo_ptx": ["--iterations=20", "--val_prompts=32", "--val_samples=2", "--sample_interval=0"],
    "ppo_verifier": ["--iterations=20", "--val_prompts=32", "--val_samples=2", "--sample_interval=0"],
    "dpo": ["--kl_prompts=32"],
    "preferred_ft": ["--eval_prompts=32"],
    "grpo": ["--val_prompts=32", "--val_samples=2", "--sample_interval=0"],
    "eval": ["--n_prompts=100", "--samples_per_prompt=2"],
    "eval_dialogue": ["--n_prompts=100", "--samples_per_prompt=2"],
}
PRESETS = {"quick": QUICK, "small": SMALL}
# "Step through it": each stage on the quick run's outputs with tiny settings, for a debugger. The first
# breakpoint goes on the line holding the snippet (where the loss is computed; for the labels and the
# evaluation, where the judge speaks); its number is looked up in the source when printed, so it cannot go
# stale.
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
    """Rewrite README's "Step through it" commands and .vscode/launch.json from STEP_THROUGH, with the
    breakpoint lines of the scripts as they are now (tests/test_pipeline.py fails until this is run after a
    script moves)."""
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
    header = ("// Generated from pipeline.STEP_THROUGH by `python pipeline.py --step_through_docs` "
              "(tests/test_pipeline.py\n"
              "// checks they agree). Run `python pipeline.py --quick` first; put the first breakpoint where "
              "README's\n"
              "// \"Step through it\" says (the line that computes the loss).\n")
    launch = json.dumps({"version": "0.2.0", "configurations": configurations}, indent=2)
    write_text(os.path.join(here, ".vscode", "launch.json"), header + launch + "\n")


# The file whose presence means a stage finished (every script writes it last).
DONE = {stage: "summary.json" for stage in STAGES} | {"eval": "eval.json", "eval_dialogue": "eval.json"}


@dataclass
class Config:
    out_dir: str = field(default="", metadata={
        "help": "where every stage's folder and the report go (default: out, or out/<preset>)"})
    preset: str = field(default="", metadata={
        "help": "small (the default model, fewer steps: a few minutes) or quick (a miniature in under a "
                "minute); empty = the full run"})
    quick: bool = field(default=False, metadata={"help": "the same as --preset=quick"})
    force: str = field(default="", metadata={"help": f"rerun from this stage on: one of {', '.join(STAGES)}"})
    seed: int = field(default=1337, metadata={"help": "seed passed to every stage"})
    world_seed: int = field(default=0, metadata={
        "help": "the instruction world (its splits and probe facts), passed to every stage; defaults were "
                "chosen on world 0's dev split"})
    eval_split: str = field(default="test", metadata={
        "help": "test (only reported) or dev (where defaults are chosen)"})
    ptx_coef: float = field(default=1.0, metadata={"help": "PPO-ptx pretraining-loss coefficient (gamma)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps"})
    dtype: str = field(default="auto", metadata={
        "help": "passed to every stage: auto (bf16 autocast where this device's bf16 matmul is clearly "
                "faster), float32 or bfloat16"})
    frontier: str = field(default="", metadata={
        "help": "only draw one frontier figure (gold gain against √KL to SFT) over these finished runs on "
                "fresh worlds, folders holding report.json, comma-separated: <out_dir>/frontier.png and "
                "frontier.json"})
    compare: str = field(default="", metadata={
        "help": "only compare two finished runs of one world (folders A,B): each method's gain over SFT in "
                "both and A − B with its 95% interval over prompts; <out_dir>/compare.json"})
    jobs: int = field(default=0, metadata={
        "help": "how many stages from the reward model on run side by side, each on one thread; 0 = one per "
                "CPU core (the numbers do not depend on it)"})
    verifier: bool = field(default=False, metadata={
        "help": "also train PPO with --reward=verifier (stage ppo_verifier: a checker's +-1 on sums, code "
                "and comparisons added to the RM score; about as long as PPO)"})
    step_through_docs: bool = field(default=False, metadata={
        "help": "only rewrite README's step-through commands and .vscode/launch.json from the scripts' "
                "current lines"})

    def validate(self):
        check(self.force in ("", *STAGES), f"--force={self.force}: expected one of {', '.join(STAGES)}")
        check(self.preset in ("", *PRESETS),
              f"--preset={self.preset}: expected one of {', '.join(PRESETS)} (or none)")
        check(not (self.quick and self.preset not in ("", "quick")),
              f"--quick and --preset={self.preset}: pick one")
        if self.quick:
            self.preset = "quick"
        check(self.eval_split in ("test", "dev"),
              f"--eval_split must be test or dev, got {self.eval_split!r}")
        check_dtype(self.dtype)
        check(self.jobs >= 0, f"--jobs must be >= 0 (0 = one per core), got {self.jobs}")
        check(not self.compare or len([f for f in self.compare.split(",") if f]) == 2,
              f"--compare={self.compare}: expected two run folders, A,B")


def stage_commands(cfg):
    o = cfg.out_dir
    common = [f"--seed={cfg.seed}", f"--world_seed={cfg.world_seed}", f"--device={cfg.device}",
              f"--dtype={cfg.dtype}"]
    models = f"pretrained:{o}/pretrain,sft:{o}/sft," + ",".join(f"{m}:{o}/{m}" for m in chosen(RLHF, cfg))
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
        "preferred_ft": ["train_sft.py", f"--init={o}/sft", f"--preferred={o}/labels",
                         f"--out_dir={o}/preferred_ft", "--lr=1e-4", "--epochs=2", "--warmup_steps=10",
                         "--eval_interval=50"],
        # GRPO at its defaults: 32 prompts x 4 samples = twice PPO's 64 responses per iteration, lr 3e-5,
        # 30 iterations (why not PPO's lr: train_grpo.py's Config)
        "grpo": ["train_grpo.py", f"--sft={o}/sft", f"--rm={o}/rm", f"--out_dir={o}/grpo"],
        # PPO with a reward that checks sums, code and comparisons (minigpt/verifier.py); opt-in (--verifier).
        # 150 iterations: its prompts include every checkable one of the SFT and ranking splits
        # (minigpt/rollout.split_prompts), and on world 0's dev split wrong sums fell by 14% at 60 iterations
        # on the PPO prompts alone, by 51% at 150 with the checkable ones (docs/defaults_history.md)
        "ppo_verifier": ["train_ppo.py", f"--sft={o}/sft", f"--rm={o}/rm", f"--out_dir={o}/ppo_verifier",
                         "--reward=verifier", "--iterations=150"],
        "eval": ["evaluate.py", f"--models={models}", "--baseline=sft", f"--split={cfg.eval_split}",
                 f"--ref={o}/sft", f"--rm={o}/rm", "--best_of=4", f"--json={o}/eval/eval.json"],
        # the same models on conversations: a follow-up after one earlier turn (minigpt/dialogues.py)
        "eval_dialogue": ["evaluate.py", f"--models={models}", "--baseline=sft",
                          f"--split=dialogue_{cfg.eval_split}", "--probe=false", f"--ref={o}/sft",
                          f"--rm={o}/rm", "--best_of=4", "--show=12", f"--json={o}/eval_dialogue/eval.json"],
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
    """A miniature's stages must never be taken for the real run's (or the reverse), nor one world's for
    another's: out_dir/pipeline.json says which kind of run wrote the folder, and a folder of another kind is
    refused."""
    path = os.path.join(cfg.out_dir, "pipeline.json")
    if os.path.exists(path):
        with open(path) as f:
            was = json.load(f)
        was_preset = was.get("preset", "quick" if was.get("quick") else "")
        if was_preset != cfg.preset:
            kinds = {"quick": "a --quick miniature", "small": "a --preset=small run", "": "a full run"}
            raise UserError(f"{cfg.out_dir} holds {kinds[was_preset]}'s stages and this is "
                            f"{kinds[cfg.preset]}: use another --out_dir, or delete that folder")
        if was.get("world_seed", 0) != cfg.world_seed:
            raise UserError(f"{cfg.out_dir} holds the stages of world {was.get('world_seed', 0)} and this is "
                            f"world {cfg.world_seed}: use another --out_dir, or delete that folder")
        if was.get("dtype", "auto") != cfg.dtype:
            raise UserError(f"{cfg.out_dir} holds stages run with --dtype={was.get('dtype', 'auto')} and "
                            f"this run has --dtype={cfg.dtype}: use another --out_dir, or delete that folder")
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


def run_side_by_side(todo, stages, commands, cfg, here, seconds, timing_path):
    """Run the stages in todo, each once the stages it NEEDS have finished, up to cfg.jobs (0: one per core)
    at a time, each on one thread with its output in <out_dir>/logs/<stage>.log. A failed stage lets the
    others finish, then stops the run; Ctrl-C reaches every stage, and each is waited for (it saves its
    last.pt on the way out)."""
    jobs = cfg.jobs or os.cpu_count() or 1
    env = dict(os.environ, OMP_NUM_THREADS="1")
    os.makedirs(os.path.join(cfg.out_dir, "logs"), exist_ok=True)
    waiting, running, failed = list(todo), {}, []    # running: stage -> (process, start time, log file)
    try:
        while waiting or running:
            ready = [s for s in waiting if not any(n in waiting or n in running for n in NEEDS[s])]
            # the longest stage first (the verifier run: 150 iterations), or it would end alone, last
            ready.sort(key=lambda s: s != "ppo_verifier")
            free = 0 if failed else jobs - len(running)     # after a failure, only wait for what runs
            for stage in ready[:free]:
                log_path = os.path.join(cfg.out_dir, "logs", f"{stage}.log")
                print(f"\n[{stages.index(stage) + 1}/{len(stages) + 1}] {stage}: one thread, its output in "
                      f"{log_path}\n$ OMP_NUM_THREADS=1 " + " ".join(shlex.quote(c) for c in commands[stage]),
                      flush=True)
                log = open(log_path, "w")
                proc = subprocess.Popen(commands[stage], cwd=here, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
                running[stage] = (proc, time.time(), log)
                waiting.remove(stage)
            if failed and not running:
                break
            time.sleep(0.2)
            for stage, (proc, t0, log) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[stage]
                if proc.returncode != 0:
                    failed.append(stage)
                    print(f"{stage} failed (exit code {proc.returncode}); the end of {log.name}:\n"
                          + "".join(open(log.name).readlines()[-15:]), flush=True)
                    continue
                seconds[stage] = round(time.time() - t0, 1)
                write_json(timing_path, seconds)
                print(f"{stage} done in {seconds[stage]:.0f} s", flush=True)
    except KeyboardInterrupt:
        for proc, _, _ in running.values():
            while proc.poll() is None:
                try:
                    proc.wait()
                except KeyboardInterrupt:   # a second Ctrl-C: still wait, never a traceback
                    pass
        raise KeyboardInterrupt(*running) from None     # the stages it stopped
    if failed:
        raise UserError(f"stage {', '.join(failed)} failed (the log above); fix it and rerun: finished "
                        "stages are skipped")


def main(cfg):
    here = os.path.dirname(os.path.abspath(__file__))
    if cfg.step_through_docs:
        return write_step_through_docs(here)
    if cfg.frontier:
        out_dir = cfg.out_dir or "out"
        points = write_frontier(out_dir, [f for f in cfg.frontier.split(",") if f])
        return print("\n".join(table(points)) + f"\nwrote {out_dir}/frontier.png and {out_dir}/frontier.json")
    if cfg.compare:
        out_dir = cfg.out_dir or "out"
        lines = write_compare(out_dir, *[f for f in cfg.compare.split(",") if f])
        return print("\n".join(lines) + f"\nwrote {out_dir}/compare.json")
    cfg.out_dir = cfg.out_dir or (f"out/{cfg.preset}" if cfg.preset else "out")
    os.makedirs(cfg.out_dir, exist_ok=True)
    check_kind_of_run(cfg)
    timing_path = os.path.join(cfg.out_dir, "stage_seconds.json")
    seconds = json.load(open(timing_path)) if os.path.exists(timing_path) else {}
    forced = STAGES[STAGES.index(cfg.force):] if cfg.force else []
    commands = stage_commands(cfg)
    stages = chosen(STAGES, cfg)
    t_start = time.time()
    todo = []
    for i, stage in enumerate(stages, 1):
        done = os.path.join(cfg.out_dir, stage, DONE[stage])
        if os.path.exists(done) and stage not in forced:
            print(f"[{i}/{len(stages) + 1}] {stage}: {done} exists: stage complete, skipped (--force={stage} "
                  "reruns it)")
        else:
            todo.append(stage)
    try:
        for stage in [s for s in todo if s not in SIDE_BY_SIDE]:
            number = f"[{stages.index(stage) + 1}/{len(stages) + 1}]"
            print(f"\n{'=' * 78}\n{number} {stage}\n{'=' * 78}", flush=True)
            print("$ " + " ".join(shlex.quote(c) for c in commands[stage]), flush=True)
            t0 = time.time()
            returncode = run_stage(commands[stage], here)
            if returncode != 0:
                raise UserError(f"stage {stage} failed (exit code {returncode}); fix it and rerun: "
                                "finished stages are skipped")
            seconds[stage] = round(time.time() - t0, 1)
            write_json(timing_path, seconds)
        side = [s for s in todo if s in SIDE_BY_SIDE]
        run_side_by_side(side, stages, commands, cfg, here, seconds, timing_path)
    except KeyboardInterrupt as e:
        print(f"\ninterrupted during stage {', '.join(e.args) or stage}; rerun the same command to "
              "continue: finished stages are skipped", file=sys.stderr)
        sys.exit(130)
    print(f"\n{'=' * 78}\n[{len(stages) + 1}/{len(stages) + 1}] report\n{'=' * 78}")
    wall = time.time() - t_start
    seconds = {s: seconds[s] for s in STAGES if s in seconds}   # in the stages' order, however they finished
    write_report(cfg.out_dir, seconds, cfg, chosen(RLHF, cfg), wall)
    total = sum(seconds.values())
    print(f"\n{'stage':>12} {'seconds':>8} {'share':>6}")
    for stage, t in seconds.items():
        side_by_side = "  side by side" if stage in SIDE_BY_SIDE else ""
        print(f"{stage:>12} {t:8.0f} {t / max(total, 1e-9):6.0%}{side_by_side}")
    print(f"pipeline done in {wall:.0f} s (stages: {total:.0f} s in all, from the reward model on side by "
          f"side); read {cfg.out_dir}/report.md")
    if cfg.preset == "quick":
        print("\nStep through any stage in a debugger, on these outputs with tiny settings "
              "(c = run to the breakpoint, n = next line, s = step into, p x = print x):")
        for stage, (args, breakpoint) in step_through_commands(cfg.out_dir).items():
            print(f"  {stage:>8}: python -m pdb -c 'b {breakpoint}' -c c {' '.join(args)}")


if __name__ == "__main__":
    run(main, Config)
