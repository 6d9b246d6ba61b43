"""Reward model over-optimisation, measured (Gao, Schulman, Hilton 2022, "Scaling laws for reward model
overoptimization"): optimise against the reward model (the proxy) harder and harder, and watch the gold judge
(the true objective, here the world's) at each distance from the SFT model.

Distance is d = √KL(π || π_SFT), in nats^½. Two ways to move away from the SFT model:

  best-of-n   sample m responses per prompt from the SFT model, keep the one the reward model scores highest.
              For n = 1, 2, 4, ..., m: the EXACT expectation over every n-subset of the m samples
              (minigpt.evaluation.best_of_n_expectation), at KL = log n − (n−1)/n (analytic; an upper bound
              when samples repeat, as short answers do).
  RL (PPO)    train_ppo.py at several KL coefficients β, each a subprocess in <out_dir>/ppo_beta<β>; its
              validation rows (every --eval_interval iterations) give (KL, RM score, gold) along the way.

Then Gao's functional forms, fitted to the gold GAIN R = gold(d) − gold(0) by least squares:
  best-of-n  R(d) = d (α − β d)          RL  R(d) = d (α − β log d)
(and the same forms to the proxy's gain). Best-of-n uses the first --n_prompts of the world's test prompts;
the RL points are PPO's own 64 validation prompts, 4 samples each (held out from its training prompts, never
the test split), because train_ppo.py evaluates there while it trains. Each curve is measured against its
own d = 0 point (the SFT model on its prompts), so the gains are comparable; the absolute scores at d = 0
differ by prompt set.

    python sweep.py                                    # out/sft + out/rm -> out/sweep, about 11 minutes
                                                       # on 2 idle cores
    python sweep.py --ppo_runs=0.02:60 --ppo_args="--lr=2e-4"      # one harder-pushed RL run

Writes <out_dir>/overoptimisation.png, the PPO run folders, and <out_dir>/sweep.json last.
"""

import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from minigpt.checkpoint import check_same_tokenizer, config_dict, load_model, write_json
from minigpt.cli import UserError, check, run
from minigpt.evaluation import (best_of_n_expectation, best_of_n_kl, best_of_n_kl_bound, fit_best_of_n,
                                fit_rl, gao_best_of_n, gao_rl)
from minigpt.respond import respond
from minigpt.scoring import NO_EOS_PENALTY, reward_scores
from minigpt.training import pick_device, read_metrics
from minigpt.world import World

ROOT = os.path.dirname(os.path.abspath(__file__))
SET_BY_SWEEP = ("sft", "rm", "out_dir", "kl_coef", "iterations", "eval_interval", "seed", "world_seed",
                "device", "max_new_tokens", "temperature", "no_eos_penalty", "resume")


@dataclass
class Config:
    out_dir: str = field(default="out/sweep", metadata={
        "help": "folder to write (the plot, sweep.json, the PPO runs)"})
    sft: str = field(default="out/sft", metadata={
        "help": "SFT stage folder: best-of-n's sampler and PPO's start"})
    rm: str = field(default="out/rm", metadata={
        "help": "reward model stage folder: the proxy being optimised"})
    world_seed: int = field(default=0, metadata={
        "help": "seed of the built-in instruction world (prompts, gold judge)"})
    seed: int = field(default=1337, metadata={
        "help": "best-of-n's sampling seed, and every PPO run's --seed"})
    # best-of-n
    n_prompts: int = field(default=96, metadata={
        "help": "best-of-n: the first this many of the world's test prompts"})
    samples: int = field(default=64, metadata={
        "help": "best-of-n: responses sampled per prompt (m); n = 1, 2, 4, ... up to m, each the exact "
                "expectation over n-subsets of the m"})
    batch_size: int = field(default=256, metadata={
        "help": "best-of-n: responses per generation / reward model batch"})
    max_new_tokens: int = field(default=24, metadata={
        "help": "longest response (best-of-n and PPO; PPO's default)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (best-of-n and PPO)"})
    no_eos_penalty: float = field(default=NO_EOS_PENALTY, metadata={
        "help": "score of a response that never ended, instead of the RM's (best-of-n and PPO: "
                "train_ppo.py's rule)"})
    # RL
    ppo_runs: str = field(default="0.2:60,0.05:60,0.01:120", metadata={
        "help": "PPO runs as KL_COEF:ITERATIONS,... (empty = none); each in out_dir/ppo_beta<β>. A run's "
                "first k iterations are those of a k-iteration run (prompts and noise follow (seed, "
                "iteration)), so the longest run needs no shorter twin"})
    eval_interval: int = field(default=5, metadata={
        "help": "PPO: iterations between validation rows (the RL points)"})
    ppo_args: str = field(default="", metadata={"help": "more train_ppo.py options for every run, "
                                                        "space-separated, e.g. '--lr=3e-4'"})
    device: str = field(default="auto", metadata={
        "help": "auto, cpu, cuda, cuda:N or mps (also passed to PPO)"})

    def validate(self):
        for key in ("n_prompts", "samples", "batch_size", "max_new_tokens", "eval_interval"):
            check(getattr(self, key) > 0, f"--{key} must be > 0, got {getattr(self, key)}")
        check(self.temperature > 0,
              f"--temperature must be > 0 (best-of-n's KL needs sampling), got {self.temperature}")
        runs = parse_runs(self.ppo_runs)
        # the runs differ only in β and iterations, which parse_runs checks: train_ppo.py's own checks once
        if runs:
            check_ppo_config(self, *runs[0])


# ---- the RL runs: what each subprocess is told ---------------------------------------------------------

def parse_runs(spec):
    """"0.1:60,0.01:120" -> [(0.1, 60), (0.01, 120)]; empty -> []."""
    runs = []
    for item in [s for s in spec.split(",") if s.strip()]:
        beta, sep, iterations = item.partition(":")
        try:
            runs.append((float(beta), int(iterations)))
        except ValueError:
            raise UserError(f"--ppo_runs: expected KL_COEF:ITERATIONS, got {item!r}") from None
        check(sep and runs[-1][0] >= 0 and runs[-1][1] > 0,
              f"--ppo_runs: {item!r} needs a KL coefficient >= 0 and iterations > 0")
    betas = [b for b, _ in runs]
    check(len(set(betas)) == len(betas),
          f"--ppo_runs: each KL coefficient once (each run is out_dir/ppo_beta<β>), got {spec!r}")
    return runs


def ppo_dir(cfg, beta):
    return os.path.join(cfg.out_dir, f"ppo_beta{beta:g}")


def ppo_argv(cfg, beta, iterations):
    """train_ppo.py's options for one run: the sweep's settings, then --ppo_args."""
    extra = shlex.split(cfg.ppo_args)
    for arg in extra:
        key = arg[2:].partition("=")[0].replace("-", "_") if arg.startswith("--") else None
        check(key not in SET_BY_SWEEP,
              f"--ppo_args: {arg!r} is set by the sweep itself (use the sweep's own flag)")
    return [f"--sft={cfg.sft}", f"--rm={cfg.rm}", f"--out_dir={ppo_dir(cfg, beta)}", f"--kl_coef={beta}",
            f"--iterations={iterations}", f"--eval_interval={cfg.eval_interval}", f"--seed={cfg.seed}",
            f"--world_seed={cfg.world_seed}", f"--device={cfg.device}",
            f"--max_new_tokens={cfg.max_new_tokens}", f"--temperature={cfg.temperature}",
            f"--no_eos_penalty={cfg.no_eos_penalty}", "--sample_interval=0", "--log_interval=10", *extra]


def check_ppo_config(cfg, beta, iterations):
    """Ask train_ppo.py (--check_config: parsed and validated, nothing run) about one run's options, so a bad
    --ppo_args is a one-line error here, before anything runs."""
    argv = ppo_argv(cfg, beta, iterations)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "train_ppo.py"), *argv, "--check_config"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["(no output)"])[-1].removeprefix("error: ")
        raise UserError(f"--ppo_args / --ppo_runs (train_ppo.py says): {said}")


def run_ppo(cfg, beta, iterations):
    """Train one PPO run as a subprocess (its output in <run>/train.log) -> (validation rows of metrics.jsonl
    in iteration order, seconds)."""
    folder = ppo_dir(cfg, beta)
    os.makedirs(folder, exist_ok=True)
    log_path = os.path.join(folder, "train.log")
    print(f"PPO β = {beta:g}, {iterations} iterations -> {folder} (log: {log_path}) ...", flush=True)
    t0 = time.time()
    with open(log_path, "w") as log:
        done = subprocess.run([sys.executable, os.path.join(ROOT, "train_ppo.py"),
                               *ppo_argv(cfg, beta, iterations)], stdout=log, stderr=subprocess.STDOUT)
    seconds = time.time() - t0
    if done.returncode != 0:
        with open(log_path) as f:
            last = ([line.strip() for line in f if line.strip()] or ["(no output)"])[-1]
        raise UserError(f"PPO run {folder} failed (exit {done.returncode}): {last[:200]}; see {log_path}")
    rows = val_rows(folder)
    print(f"  done in {seconds:.0f} s: {len(rows)} validation rows, last KL {rows[-1]['val_kl']:.2f} nats, "
          f"RM {rows[-1]['val_rm_score']:+.3f}, gold {rows[-1]['val_gold']:.3f}", flush=True)
    return rows, seconds


def val_rows(folder):
    return [r for r in read_metrics(os.path.join(folder, "metrics.jsonl")) if "val_kl" in r]


# ---- best-of-n -----------------------------------------------------------------------------------------

@torch.no_grad()
def sample_and_score(model, rm, tokenizer, world, tasks, cfg):
    """m = cfg.samples responses to each task from the SFT model, with the RM score (no-EOS penalty applied)
    and the gold score of each -> (rm (P, m), gold (P, m), eos share). Each distinct (prompt, text) is scored
    once, so the same text always gets the very same RM score (ties are exact)."""
    P, m = len(tasks), cfg.samples
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.seed)
    instructions = [t.prompt for t in tasks] * m                        # sample j of task p at j*P + p
    out = respond(model, tokenizer, instructions, cfg.max_new_tokens, cfg.temperature, generator=g,
                  batch_size=cfg.batch_size)
    keys = sorted({(i % P, text) for i, text in enumerate(out.texts)})       # distinct (prompt, text)
    raw = reward_scores(rm, tokenizer, [tasks[p].prompt for p, _ in keys], [t for _, t in keys],
                        cfg.batch_size)
    rm_of = {k: s for k, s in zip(keys, raw.tolist())}
    gold_of = {k: world.gold_score(tasks[k[0]], k[1]) for k in keys}
    rm_scores = np.array([rm_of[(i % P, t)] if e else cfg.no_eos_penalty
                          for i, (t, e) in enumerate(zip(out.texts, out.eos))]).reshape(m, P).T    # (P, m)
    gold = np.array([gold_of[(i % P, t)] for i, t in enumerate(out.texts)]).reshape(m, P).T         # (P, m)
    print(f"  {P * m} samples, {len(keys)} distinct (prompt, text), {np.mean(out.eos):.0%} ended", flush=True)
    return rm_scores, gold, float(np.mean(out.eos))


def best_of_n_points(rm_scores, gold):
    """One point per n = 1, 2, 4, ... ≤ m: the mean over prompts of the exact best-of-n expectation."""
    P, m = rm_scores.shape
    points = []
    for n in [2 ** k for k in range(m.bit_length())]:                       # 1, 2, 4, ... ≤ m
        e = np.array([best_of_n_expectation(rm_scores[p], gold[p], n) for p in range(P)])   # (P, 2): RM, gold
        kl = best_of_n_kl_bound(n)                                             # log n − (n−1)/n
        points.append(dict(n=n, kl=kl, sqrt_kl=math.sqrt(kl), proxy=float(e[:, 0].mean()),
                           gold=float(e[:, 1].mean()),
                           # for comparison: the KL estimated from each prompt's samples (repeats count)
                           kl_estimated=float(np.mean([best_of_n_kl(rm_scores[p], n) for p in range(P)]))))
    return points


# ---- fits ----------------------------------------------------------------------------------------------

# gains R = score(d) − score(d = 0) fitted with Gao's form; peak of the fitted curve where dR/dd = 0:
#   best-of-n  R = d (α − β d):      d* = α / (2β),        R(d*) = α² / (4β)
#   RL         R = d (α − β log d):  d* = exp(α/β − 1),    R(d*) = β d*
# (no peak inside d > 0 when β ≤ 0: the fitted curve only rises)
def fit(kind, d, gain):
    d, gain = np.asarray(d, dtype=np.float64), np.asarray(gain, dtype=np.float64)
    alpha, beta = (fit_best_of_n if kind == "best_of_n" else fit_rl)(d, gain)
    if not math.isfinite(alpha):
        return dict(alpha=None, beta=None, rmse=None, peak_sqrt_kl=None, peak_gain=None,
                    points=int((d > 0).sum()))
    curve = gao_best_of_n if kind == "best_of_n" else gao_rl
    used = d > 0                                                              # R(0) = 0 by construction
    rmse = float(np.sqrt(np.mean((curve(d[used], alpha, beta) - gain[used]) ** 2)))
    peak = None
    if beta > 0:
        if kind == "best_of_n":
            peak = alpha / (2 * beta)
        elif alpha / beta - 1 < 50:                                         # else: far beyond any measured d
            peak = math.exp(alpha / beta - 1)
    return dict(alpha=alpha, beta=beta, rmse=rmse, peak_sqrt_kl=peak,
                peak_gain=None if peak is None else float(curve(peak, alpha, beta)), points=int(used.sum()))


def gains(points, key):
    return [p[key] - points[0][key] for p in points]                         # against the d = 0 point


# ---- the figure ----------------------------------------------------------------------------------------

def plot(path, bon, runs, fits):
    """Left: gold gain, right: proxy (RM) gain, both against √KL; the points, and each fitted curve drawn over
    the range of the points it was fitted to (solid: gold, dashed: proxy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def grid(points):                                                   # d from 0 to the curve's last point
        return np.linspace(0, max(p["sqrt_kl"] for p in points), 100)[1:]

    fig, axes = plt.subplots(1, 2, figsize=(13, 7.5), sharex=True)
    for ax, key, what in ((axes[0], "gold", "gold score"), (axes[1], "proxy", "RM score (proxy)")):
        style = "-" if key == "gold" else "--"
        ax.plot([p["sqrt_kl"] for p in bon], gains(bon, key), "o", color="C0",
                label=f"best-of-n, n = 1..{bon[-1]['n']}, test prompts (KL = log n − (n−1)/n, analytic: an "
                      f"upper bound); SFT {bon[0][key]:.3f}")
        for p, y in zip(bon, gains(bon, key)):
            ax.annotate(f"n={p['n']}", (p["sqrt_kl"], y), textcoords="offset points", xytext=(-6, 6),
                        fontsize=7, color="C0")
        f = fits["best_of_n"][key]
        if f["alpha"] is not None:
            ax.plot(grid(bon), gao_best_of_n(grid(bon), f["alpha"], f["beta"]), style, color="C0", lw=1.5,
                    label=f"  fit d(α − βd): α = {f['alpha']:.3f}, β = {f['beta']:.3f}")
        for i, r in enumerate(runs):
            ax.plot([p["sqrt_kl"] for p in r["points"]], gains(r["points"], key), ".", color=f"C{i + 1}",
                    label=f"PPO β = {r['kl_coef']:g}, iterations 0..{r['points'][-1]['iteration']}, "
                          f"validation prompts; SFT {r['points'][0][key]:.3f}")
            f = r["fits"][key]
            if f["alpha"] is not None:
                ax.plot(grid(r["points"]), gao_rl(grid(r["points"]), f["alpha"], f["beta"]), style,
                        color=f"C{i + 1}", lw=1,
                        label=f"  fit d(α − β log d): α = {f['alpha']:.3f}, β = {f['beta']:.3f}")
        f = fits["rl_pooled"][key]
        if runs and f["alpha"] is not None:
            pts = [p for r in runs for p in r["points"]]
            ax.plot(grid(pts), gao_rl(grid(pts), f["alpha"], f["beta"]), style, color="k", lw=1,
                    label=f"fit d(α − β log d) to all PPO points: α = {f['alpha']:.3f}, β = {f['beta']:.3f}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("d = √KL to the SFT model (nats^½)")
        ax.set_ylabel(f"{what}: gain over the SFT model (d = 0)")
        ax.set_title(what + (": the true objective (gold judge)" if key == "gold" else ": what is optimised"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13))       # below the panel
    fig.suptitle("Reward model over-optimisation (Gao et al. 2022): optimising the reward model against the "
                 "KL to the SFT model", fontsize=11)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)                                                     # atomic: never half a PNG


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def print_table(bon, runs, fits):
    print(f"\n{'points':<27} {'KL':>6} {'√KL':>5} {'RM (proxy)':>10} {'gold':>6}")
    for p in bon:
        print(f"{'best-of-' + str(p['n']):<27} {p['kl']:6.2f} {p['sqrt_kl']:5.2f} {p['proxy']:+10.3f} "
              f"{p['gold']:6.3f}   (KL estimated from the samples {p['kl_estimated']:.2f})")
    for r in runs:
        pts = r["points"]
        peak = max(pts, key=lambda p: p["gold"])
        for label, p in (("start", pts[0]), ("best gold", peak), ("end", pts[-1])):
            print(f"{'PPO β=' + format(r['kl_coef'], 'g') + ' it ' + str(p['iteration']) + ' ' + label:<27} "
                  f"{p['kl']:6.2f} {p['sqrt_kl']:5.2f} {p['proxy']:+10.3f} {p['gold']:6.3f}")
    print(f"\n{'fit of the gain, d = √KL':<34} {'α':>7} {'β':>7} {'rmse':>6} {'peak d':>7} {'peak gain':>9}")
    rows = [("best-of-n", fits["best_of_n"])] + [(f"PPO β={r['kl_coef']:g}", r["fits"]) for r in runs]
    rows += [("PPO, all runs", fits["rl_pooled"])] if runs else []
    for name, f in rows:
        for key in ("gold", "proxy"):
            g = f[key]
            print(f"{name + ' ' + key:<34} {fmt(g['alpha']):>7} {fmt(g['beta']):>7} {fmt(g['rmse']):>6} "
                  f"{fmt(g['peak_sqrt_kl'], '.2f'):>7} {fmt(g['peak_gain']):>9}")


# ---- the study -----------------------------------------------------------------------------------------

def main(cfg):
    t_start = time.time()
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    runs_spec = parse_runs(cfg.ppo_runs)
    # load first: a bad folder stops the sweep before any work, and nothing is written
    model, tokenizer, _ = load_model(cfg.sft, "lm", device)
    rm, rm_tokenizer, _ = load_model(cfg.rm, "reward", device)
    check_same_tokenizer(tokenizer, rm_tokenizer, cfg.sft, cfg.rm)
    model.eval()
    rm.eval()
    world = World(cfg.world_seed)
    tasks = world.split("test")
    check(cfg.n_prompts <= len(tasks),
          f"--n_prompts={cfg.n_prompts}: the world has {len(tasks)} test prompts")
    tasks = tasks[: cfg.n_prompts]
    os.makedirs(cfg.out_dir, exist_ok=True)

    # 1. best-of-n: m samples per prompt from the SFT model, every n from one pool
    print(f"best-of-n: {cfg.samples} samples for each of {len(tasks)} test prompts from {cfg.sft}, "
          f"scored by {cfg.rm} ...", flush=True)
    t0 = time.time()
    rm_scores, gold, eos_rate = sample_and_score(model, rm, tokenizer, world, tasks, cfg)     # (P, m) each
    bon = best_of_n_points(rm_scores, gold)
    seconds = {"best_of_n": time.time() - t0}
    print(f"  done in {seconds['best_of_n']:.0f} s", flush=True)

    # 2. RL: one PPO run per KL coefficient; its validation rows are the points
    runs = []
    for beta, iterations in runs_spec:
        rows, s = run_ppo(cfg, beta, iterations)
        points = [dict(iteration=r["step"], kl=r["val_kl"], sqrt_kl=math.sqrt(max(r["val_kl"], 0.0)),
                       proxy=r["val_rm_score"], gold=r["val_gold"]) for r in rows]
        runs.append(dict(kl_coef=beta, iterations=iterations, out_dir=ppo_dir(cfg, beta), seconds=s,
                         points=points))
        seconds[f"ppo_beta{beta:g}"] = s

    # 3. fits of the gains over each curve's own d = 0 point
    fits = {"best_of_n": {key: fit("best_of_n", [p["sqrt_kl"] for p in bon], gains(bon, key))
                          for key in ("gold", "proxy")}}
    for r in runs:
        r["fits"] = {key: fit("rl", [p["sqrt_kl"] for p in r["points"]], gains(r["points"], key))
                     for key in ("gold", "proxy")}
    fits["rl_pooled"] = {key: fit("rl", [p["sqrt_kl"] for r in runs for p in r["points"]],
                                  [g for r in runs for g in gains(r["points"], key)])
                         for key in ("gold", "proxy")}

    # 4. the figure, the table, and the JSON last
    png = os.path.join(cfg.out_dir, "overoptimisation.png")
    plot(png, bon, runs, fits)
    print_table(bon, runs, fits)
    seconds["total"] = time.time() - t_start
    out = {
        "forms": {"d": "sqrt(max(KL, 0)) to the SFT model, nats^0.5",
                  "gain": "score(d) - score at d = 0 of the same curve",
                  "best_of_n": "gain(d) = d * (alpha - beta * d)",
                  "rl": "gain(d) = d * (alpha - beta * log d), d > 0",
                  "peak": "best-of-n d* = alpha / (2 beta); RL d* = exp(alpha / beta - 1); "
                          "null when beta <= 0"},
        "best_of_n": {
            "prompts": f"the first {len(tasks)} of World({cfg.world_seed}).split('test')",
            "samples_per_prompt": cfg.samples, "eos_rate": eos_rate,
            "expectation": "exact, over all n-subsets of each prompt's samples; "
                           "RM ties broken uniformly at random",
            "kl": "analytic log n - (n-1)/n (an upper bound when samples repeat); kl_estimated: "
                  "minigpt.evaluation.best_of_n_kl on each prompt's samples, averaged",
            "points": bon, "fit": fits["best_of_n"]},
        "rl": {
            "prompts": "each PPO run's validation prompts (train_ppo.py --val_prompts, from the world's "
                       "'ppo' split, held out from PPO training, sampled with a fixed generator), not the "
                       "test prompts",
            "runs": runs, "fit_pooled": fits["rl_pooled"]},
        "seconds": seconds,
        "settings": config_dict(cfg),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}, "
                   f"torch {torch.__version__}, {torch.get_num_threads()} threads "
                   f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
    }
    write_json(os.path.join(cfg.out_dir, "sweep.json"), out)
    print(f"\nwrote {png} and {os.path.join(cfg.out_dir, 'sweep.json')} ({seconds['total']:.0f} s)")


if __name__ == "__main__":
    run(main, Config)
