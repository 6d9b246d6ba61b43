"""The pipeline's report: out/report.json (the figures each stage wrote, gathered in one place) and
out/report.md (the same as tables, with the plots and the same prompts answered by each model). pipeline.py
writes it after the last stage; it reads only the stages' folders.
"""

import json
import os
import platform
import resource
import subprocess

import numpy as np

from minigpt.checkpoint import write_json
from minigpt.evaluation import bootstrap_ci95, mean_gain
from minigpt.frontier import describe, frontier_points, plot_frontier

RUN_KINDS = {"": "with the defaults", "quick": "--quick (a miniature: numbers mean nothing)",
             "small": "--preset=small (the default model with fewer steps and prompts: directions, "
                      "not sizes)"}


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


def mistake_section(out_dir, models, rlhf, title="What RLHF changed", png="mistakes.png"):
    """'What RLHF changed': how many sampled answers of each model show each kind of mistake
    (minigpt.judge.mistakes; kinds no model shows are left out), as a table and a bar chart (out_dir/png)."""
    names = [n for n in ("sft", *rlhf, "best_of_4") if models.get(n, {}).get("mistake_counts")]
    if not names:
        return []
    counts = {n: models[n]["mistake_counts"] for n in names}
    kinds = [k for k in counts[names[0]] if any(counts[n][k] for n in names)]
    lines = ["", f"## {title}", "",
             f"Sampled answers showing each kind of mistake ({models[names[0]]['n_responses']} answers "
             "per model; an answer can show two):", "",
             "| mistake | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(str(models[n]["mistake_counts"][k]) for n in names) + " |"
              for k in kinds]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar([x + i * width for x in range(len(kinds))], [models[n]["mistake_counts"][k] for k in kinds],
               width, label=n)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(kinds))],
                  [k.replace("_", " ") for k in kinds], fontsize=8)
    ax.set_ylabel("sampled answers")
    ax.set_title(f"{title.lower()}: mistakes in the sampled answers")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, png), dpi=90)
    plt.close(fig)
    return lines + ["", f"![{title.lower()}]({png})"]


def frontier_section(out_dir, report):
    """The run's frontier (minigpt.frontier): out_dir/frontier.png and the lines that show it."""
    points = frontier_points([report]) if "sft" in report["models"] else []
    if len(points) < 2:
        return []
    plot_frontier(os.path.join(out_dir, "frontier.png"), points,
                  f"Gold gained against distance from SFT: {describe([report])}")
    return ["", "![gold gain against KL to SFT](frontier.png)", "",
            "Each method's gold gain over SFT (its 95% interval) against √KL to SFT, the KL column above "
            "(for best-of-n, estimated on its samples; dotted out to the analytic bound). Several worlds' "
            "runs in one figure: `python pipeline.py --frontier=DIR,DIR --out_dir=DIR`."]


def wrong_section(models, names):
    """Wrong answers by task kind, and how much each model cuts SFT's (1 − its count / SFT's, with a 95%
    interval by bootstrap over prompts): where a checker exists (arithmetic, code, compare) and where not."""
    if not all(models[n].get("wrong_by_kind") for n in names):
        return []
    groups = list(models[names[0]]["wrong_by_kind"])
    def cell(n, g):
        cut = (models[n].get("wrong_cut_vs_sft") or {}).get(g)
        return str(models[n]["wrong_by_kind"][g]) + (f" ({_fmt(cut[0], '+.0%')} {_ci(cut[1:], '.0%')})"
                                                     if cut and cut[0] is not None else "")
    return ["", "Wrong answers (`wrong_answer`) by task kind; in brackets the share of SFT's wrong answers "
                "cut [95% interval]:", "",
            "| task kind | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"] + [
            f"| {g} | " + " | ".join(cell(n, g) for n in names) + " |" for g in groups]


def model_figures(evaluation, seconds, seed):
    """Each evaluated model's figures from eval.json, named as report.json names them, and its gain over
    Preferred-FT (the fair baseline) where both were evaluated."""
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
            "wrong_by_kind": m.get("wrong_by_kind"), "wrong_cut_vs_sft": m.get("wrong_cut_by_kind"),
            "probe_gold_mean": m.get("probe_gold_mean"), "probe_gold_ci95": m.get("probe_gold_ci95"),
            "probe_gain_vs_sft": m.get("probe_gain_vs_baseline"), "probe_gain_ci95": m.get("probe_gain_ci95"),
            "probe_per_task": m.get("probe_per_task"), "right_rate": m.get("right_rate"),
            "follow_up_right": m.get("follow_up_right"),
            "follow_up_right_ci95": m.get("follow_up_right_ci95"),
            "train_seconds": seconds.get(name),
        }
    # The fair baseline: what DPO and PPO gain over SFT on the rankings' best answers (Preferred-FT) is what
    # the rejected answers taught. Paired answer by answer, with a 95% interval by bootstrap over prompts.
    scores, S = evaluation.get("scores") or {}, evaluation.get("samples_per_prompt") or 1
    if "preferred_ft" in scores:
        base = np.asarray(scores["preferred_ft"]).reshape(S, -1)
        for name in ("ppo", "ppo_ptx", "dpo", "grpo", "best_of_4"):
            if name in scores:
                a = np.asarray(scores[name]).reshape(S, -1)
                models[name]["gain_vs_preferred_ft"] = mean_gain(a, base)
                models[name]["gain_vs_preferred_ft_ci95"] = bootstrap_ci95(mean_gain, a, base, seed=seed)
    return models


def dialogue_section(out_dir, dialogue, rlhf):
    """Conversations, reported apart from single turns: gold, gain and win rate against SFT, how often the
    follow-ups that need the earlier turn get the right fact, gold per family, and the mistakes."""
    if not dialogue:
        return []
    models = dialogue["models"]
    families = sorted({k for m in models.values() for k in (m.get("per_task") or {})})
    lines = ["", "## Conversations", "",
             f"The held-out **{dialogue['split']}** split: {dialogue['n_prompts']} conversations, a "
             "follow-up after one earlier turn (minigpt/dialogues.py), the gold judge on the last answer. "
             "'Follow-ups right': the share of answers to follow-ups that need the earlier turn (every "
             "family but the greeting) that give the right fact, whatever their style.", "",
             "| model | gold [95% CI] | gain vs SFT [95% CI] | win rate vs SFT [95% CI] | follow-ups right "
             "[95% CI] | " + " | ".join(families) + " |", "|---" * (5 + len(families)) + "|"]
    for name, m in models.items():
        lines.append(f"| {name} | {m['gold_mean']:.3f} {_ci(m['gold_ci95'])} | "
                     f"{_fmt(m['gain_vs_sft'], '+.3f')} {_ci(m['gain_ci95'])} | "
                     f"{_fmt(m['win_rate_vs_sft'], '.0%')} {_ci(m['win_rate_ci95'], '.0%')} | "
                     f"{_fmt(m['follow_up_right'], '.0%')} {_ci(m['follow_up_right_ci95'], '.0%')} | "
                     + " | ".join(_fmt((m["per_task"] or {}).get(k)) for k in families) + " |")
    return lines + mistake_section(out_dir, models, rlhf, "What RLHF changed in conversations",
                                   "mistakes_dialogue.png")


def write_report(out_dir, seconds, cfg, rlhf, wall_seconds=None):
    """out/report.json (the figures) and out/report.md (the same, with plots and sample answers).
    cfg: pipeline.py's Config; rlhf: the models trained from the comparisons, in order (pipeline.RLHF);
    wall_seconds: how long the pipeline.py call that wrote it took (stages it skipped not counted)."""
    quick, seed = cfg.preset == "quick", cfg.seed
    def load(*parts):
        path = os.path.join(out_dir, *parts)
        return json.load(open(path)) if os.path.exists(path) else {}

    evaluation, rm, ppo = load("eval", "eval.json"), load("rm", "summary.json"), load("ppo", "summary.json")
    dpo, dialogue_eval = load("dpo", "summary.json"), load("eval_dialogue", "eval.json")
    models = model_figures(evaluation, seconds, seed)
    dialogue = model_figures(dialogue_eval, {}, seed)
    report = {
        "models": models,
        "dialogue": {"split": dialogue_eval.get("split"), "n_prompts": dialogue_eval.get("n_prompts"),
                     "models": dialogue} if dialogue else None,
        "rm": {k: rm.get(k) for k in ("accuracy", "labeler_agreement", "ceiling", "spearman",
                                      "spearman_within_prompt", "labels_spearman_within_prompt")},
        "rm_per_mistake_accuracy": rm.get("per_mistake_accuracy"),
        "rm_on_policy": {"pairs": rm.get("on_policy_pairs"),
                         "reward_model": rm.get("on_policy_gold_accuracy"),
                         "sft_likelihood": (rm.get("sft_likelihood") or {}).get("on_policy_gold_accuracy")},
        # DPO's policy read as a reward model, r̂ = β·log(π/π_SFT), on the same held-out rankings
        "dpo_implicit_reward": {k: dpo.get(k) for k in ("accuracy", "gold_accuracy",
                                                        "on_policy_gold_accuracy", "spearman")}
                               if dpo else None,
        "stage_seconds": seconds, "total_seconds": round(sum(seconds.values()), 1),
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 1), "quick": quick,
        "preset": cfg.preset or None,
        "seed": seed, "world_seed": cfg.world_seed, "eval_split": evaluation.get("split"),
        "dtype": evaluation.get("dtype"),
        "ptx_coef": cfg.ptx_coef, "kl_coef": ppo.get("kl_coef"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        # the largest resident memory of any one stage this process ran (Linux reports kilobytes); side by
        # side, two or more stages hold theirs at once
        "peak_stage_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "commit": git_commit(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    }
    write_json(os.path.join(out_dir, "report.json"), report)

    split = report["eval_split"]
    lines = ["# minigpt: what each stage of InstructGPT did", "",
             f"Run {RUN_KINDS[cfg.preset]} "
             f"on {report['machine']}, world {cfg.world_seed}, seed {seed}, dtype {report['dtype']}, "
             f"commit {report['commit']}, "
             f"{report['total_seconds']:.0f} s of stages"
             + (f" ({report['wall_seconds']:.0f} s wall, from the reward model on side by side)"
                if report["wall_seconds"] else "") + ", "
             f"at most {report['peak_stage_rss_mb']} MB of memory. "
             f"Held-out **{split}** prompts of world {cfg.world_seed}"
             + (" (the split defaults are chosen on: development numbers)" if split == "dev" else "")
             + f", gold judge, temperature {evaluation.get('temperature')}, "
             f"{evaluation.get('n_prompts')} prompts x {evaluation.get('samples_per_prompt')} samples. "
             "Gains and win rates pair each answer with the SFT model's answer of the same number to the "
             "same prompt (win rates leave ties out); 95% intervals by bootstrap over prompts; 'by prompt' "
             "compares each prompt's mean.", "",
             "| model | gold [95% CI] | gain vs SFT [95% CI] | win rate vs SFT [95% CI] (ties) "
             "| by prompt (ties) | KL to SFT | pretrain val loss | EOS rate | mean length | training s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        lines.append(f"| {name} | {m['gold_mean']:.3f} {_ci(m['gold_ci95'])} | "
                     f"{_fmt(m['gain_vs_sft'], '+.3f')} {_ci(m['gain_ci95'])} | "
                     f"{_fmt(m['win_rate_vs_sft'], '.0%')} {_ci(m['win_rate_ci95'], '.0%')} "
                     f"({_fmt(m['tie_rate_vs_sft'], '.0%')}) | {_fmt(m['prompt_win_rate_vs_sft'], '.0%')} "
                     f"({_fmt(m['prompt_tie_rate_vs_sft'], '.0%')}) | {_fmt(m['kl_to_sft'], '.2f')} | "
                     f"{_fmt(m['pretrain_val_loss'])} | {_fmt(m['eos_rate'], '.0%')} | "
                     f"{_fmt(m['mean_len'], '.1f')} | {_fmt(m['train_seconds'], '.0f')} |")
    beyond = [(n, m) for n, m in models.items() if m.get("gain_vs_preferred_ft") is not None]
    if beyond:
        lines += ["", "Against the fair baseline, Preferred-FT (SFT on each ranking's best answer; what a "
                      "method gains beyond it is what the rejected answers taught): "
                  + ", ".join(f"{n} {m['gain_vs_preferred_ft']:+.3f} {_ci(m['gain_vs_preferred_ft_ci95'])}"
                              for n, m in beyond) + "."]
    lines += frontier_section(out_dir, report)
    probe_kinds = sorted({k for m in models.values() for k in (m.get("probe_per_task") or {})})
    if probe_kinds:
        lines += ["", "## Facts no later stage saw", "",
                  f"The probe split: {evaluation.get('n_probe_prompts')} translations of words that only "
                  "the pretraining text states (no SFT, ranking or PPO prompt mentions them). Does each "
                  "method's gain carry to facts it never saw?", "",
                  "| model | probe gold [95% CI] | gain vs SFT [95% CI] | " + " | ".join(probe_kinds) + " |",
                  "|---" * (3 + len(probe_kinds)) + "|"]
        for name, m in models.items():
            if m.get("probe_gold_mean") is not None:
                lines.append(f"| {name} | {m['probe_gold_mean']:.3f} {_ci(m['probe_gold_ci95'])} | "
                             f"{_fmt(m['probe_gain_vs_sft'], '+.3f')} {_ci(m['probe_gain_ci95'])} | "
                             + " | ".join(_fmt((m["probe_per_task"] or {}).get(k)) for k in probe_kinds)
                             + " |")
    bound = [m["kl_bound"] for m in models.values() if m.get("kl_bound") is not None]
    if bound:
        lines += ["", "Best-of-n's KL is estimated on the samples it chose from (short answers repeat); "
                      f"the usual formula log n − (n−1)/n = {bound[0]:.2f} is an upper bound."]
    lines += mistake_section(out_dir, models, rlhf)
    lines += wrong_section(models, [n for n in ("sft", *rlhf, "best_of_4") if n in models])
    lines += dialogue_section(out_dir, report["dialogue"], rlhf)
    r = report["rm"]
    lines += ["", "## Reward model", "",
              f"Held-out pairwise accuracy **{_fmt(r['accuracy'])}**, beside the agreement of two "
              f"independent simulated labellers {_fmt(r['labeler_agreement'])} and the labels' ceiling "
              f"(noisy labels vs the noise-free gold order) {_fmt(r['ceiling'])}. Spearman correlation of "
              f"reward with gold score: {_fmt(r['spearman'])} across all prompts, "
              f"{_fmt(r['spearman_within_prompt'])} within a prompt "
              f"(the labels' order: {_fmt(r['labels_spearman_within_prompt'])}).", ""]
    if report["rm_per_mistake_accuracy"]:
        lines += ["| the worse response's mistake | RM accuracy |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in report["rm_per_mistake_accuracy"].items()] + [""]
    o = report["rm_on_policy"]
    if o["pairs"]:
        lines += [f"On the {o['pairs']} held-out pairs of two SFT samples (what PPO will see), the reward "
                  f"model orders {_fmt(o['reward_model'])} of them like the gold judge; the SFT model's own "
                  f"log-likelihood, used as the ranker, {_fmt(o['sft_likelihood'])}.", ""]
    d = report["dpo_implicit_reward"]
    if d:
        lines += ["DPO's policy read as a reward model, β·log(π/π_SFT), on the same held-out "
                  f"rankings: accuracy {_fmt(d['accuracy'])}, vs gold order {_fmt(d['gold_accuracy'])}, "
                  f"on pairs of two SFT samples {_fmt(d['on_policy_gold_accuracy'])}, Spearman with gold "
                  f"{_fmt(d['spearman'])}.", ""]
    lines += ["## Time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in seconds.items()]
    lines += ["", "## Plots", ""]
    for folder in ("pretrain", "sft", "rm", *rlhf):
        pngs = sorted(f for f in os.listdir(os.path.join(out_dir, folder)) if f.endswith(".png")) \
            if os.path.isdir(os.path.join(out_dir, folder)) else []
        lines += [f"![{folder} {p[:-4]}]({folder}/{p})" for p in pngs]
    samples = evaluation.get("samples") or []
    if samples:
        lines += ["", "## The same prompts, answered by each model", ""]
        names = [n for n in ("sft", *rlhf) if n in models]
        lines += ["| prompt | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for s in samples[:12]:
            cells = [str(s["responses"].get(n, {}).get("text", "")).replace("|", "\\|").replace("\n", " ")
                     + f" ({s['responses'].get(n, {}).get('gold', float('nan')):.2f})" for n in names]
            lines.append(f"| {s['instruction'].replace(chr(10), ' ')} | " + " | ".join(cells) + " |")
        lines += ["", "Gold score of each answer in brackets."]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
