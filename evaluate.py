"""Stage 6: evaluation. Compare models on held-out instructions with the gold judge: the world's `test` split,
which nothing is ever chosen on, or its `dev` split, where defaults are chosen (--split=dev); conversations
have their own, dialogue_test and dialogue_dev (a follow-up after one earlier turn: minigpt/dialogues.py).

    python evaluate.py --models=pretrain:out/pretrain,sft:out/sft,ppo:out/ppo
    python evaluate.py --models=out/sft,out/ppo --ref=out/sft --rm=out/rm --best_of=4 --greedy

Every model answers the same prompts, sampled at one temperature with the same seed. Per model:
gold score (mean and 95% interval, per task kind), exact-match rate, how often the answer ends with
end-of-text, its length, the loss on held-out pretraining text (the "alignment tax"), the KL to a
reference model (--ref), the reward model's score (--rm), and the gold score on probe instructions whose
facts appear only in the pretraining text. Against the baseline model (--baseline): the paired gain in gold
score and the win rate (on how many answers the gold judge prefers A's answer to B's, ties left out and
reported beside), each with a 95% interval by bootstrap over prompts (a prompt's answers are resampled
together: they are not independent). --best_of=N adds best-of-N sampling from one model, reranked by the
reward model: RLHF's simplest competitor; it draws its own samples, independent of the answers it is paired
with.
"""

import math
import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from minigpt.checkpoint import check_same_tokenizer, load_model, write_json
from minigpt.cli import UserError, check, named_folders, run
from minigpt.evaluation import (best_of_n_kl, best_of_n_kl_bound, bootstrap_ci95, mean_gain, win_fraction,
                                win_rate, wrong_cut)
from minigpt.dialogues import NEEDS_EARLIER
from minigpt.judge import FACT_MISTAKES, MISTAKE_KINDS, WRONG_ANSWER, mistakes
from minigpt.respond import respond
from minigpt.scoring import (NO_EOS_PENALTY, heldout_loss, join_responses, penalise_unfinished, reward_scores,
                             sampled_kl, sequence_logprobs)
from minigpt.training import autocast, check_dtype, pick_device, resolve_dtype
from minigpt.world import World

STAGES = ("pretrain", "sft", "ppo", "ppo_ptx")   # looked for under out/ when --models is empty
SPLITS = ("test", "dev", "dialogue_test", "dialogue_dev")


@dataclass
class Config:
    models: str = field(default="", metadata={
        "help": "NAME:FOLDER,... (or bare folders, named by their basename); "
                "empty = every finished stage among out/" + ",out/".join(STAGES)})
    baseline: str = field(default="", metadata={"help": "the model gains and win rates are against "
                                                        "(default: the first)"})
    split: str = field(default="test", metadata={
        "help": "test (only reported) or dev (where defaults are chosen); dialogue_test or dialogue_dev for "
                "conversations"})
    probe: bool = field(default=True, metadata={
        "help": "also answer the probe split (facts only the pretraining text states)"})
    ref: str = field(default="", metadata={"help": "reference model folder for the KL column (e.g. out/sft)"})
    rm: str = field(default="", metadata={
        "help": "reward model folder for the RM-score column (e.g. out/rm)"})
    best_of: int = field(default=0, metadata={"help": "N > 1 adds best-of-N by reward model (needs --rm)"})
    best_of_model: str = field(default="sft", metadata={
        "help": "the model (by name) that best-of-N samples from"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (RLHF samples at 1.0)"})
    greedy: bool = field(default=False, metadata={"help": "also evaluate greedy decoding of every model"})
    n_prompts: int = field(default=0, metadata={"help": "test prompts to use (0 = all)"})
    samples_per_prompt: int = field(default=4, metadata={"help": "answers sampled per test prompt (each "
                                                                 "paired with the same-numbered answer of "
                                                                 "every other model for win rates)"})
    no_eos_penalty: float = field(default=NO_EOS_PENALTY, metadata={
        "help": "best-of-N: the score of a sample that never ended (PPO's rule and default)"})
    max_new_tokens: int = field(default=32, metadata={"help": "longest answer"})
    val_tokens: int = field(default=16384, metadata={
        "help": "tokens of held-out pretraining text for the val loss"})
    seed: int = field(default=0, metadata={"help": "sampling seed (the same for every model)"})
    world_seed: int = field(default=0, metadata={"help": "seed of the built-in instruction world"})
    json: str = field(default="out/eval/eval.json", metadata={
        "help": "where to write the results (empty = nowhere)"})
    show: int = field(default=3, metadata={"help": "side-by-side samples to print"})
    batch_size: int = field(default=256, metadata={"help": "prompts per generation batch"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 autocast where this device's bf16 "
                                                         "matmul is clearly faster), float32 or bfloat16"})

    def validate(self):
        check_dtype(self.dtype)
        check(self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}")
        check(self.split in SPLITS, f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        for key in ("max_new_tokens", "val_tokens", "batch_size", "samples_per_prompt"):
            check(getattr(self, key) > 0, f"--{key} must be > 0, got {getattr(self, key)}")
        check(self.n_prompts >= 0 and self.show >= 0, "--n_prompts and --show must be >= 0")
        check(self.best_of == 0 or self.best_of >= 2,
              f"--best_of must be 0 (off) or >= 2, got {self.best_of}")
        check(self.best_of == 0 or self.rm, "--best_of needs a reward model: pass --rm=out/rm")


def parse_models(spec):
    """"a:out/x,out/y" -> [("a", "out/x"), ("y", "out/y")]; empty -> the finished stages under out/."""
    if not spec:
        found = [(s, f"out/{s}") for s in STAGES if os.path.isfile(f"out/{s}/summary.json")]
        if not found:
            raise UserError("no finished stage folders under out/; pass --models=NAME:FOLDER,...")
        return found
    return named_folders(spec.split(","))


# ---- one system's answers -------------------------------------------------------------------------------

@torch.no_grad()
def logprobs_of_answers(model, ans, pad_id, temperature, batch_size):
    """log π(y | x) of each answer of answer() (its pads removed), at `temperature` -> (B,) on the CPU."""
    device = next(model.parameters()).device
    responses = [[t for t in row if t != pad_id] for row in ans["tokens"].tolist()]
    out = []
    for i in range(0, len(responses), batch_size):
        idx, response = join_responses(ans["prompts"][i: i + batch_size], responses[i: i + batch_size],
                                       pad_id)
        out.append(sequence_logprobs(model, idx.to(device), response.to(device), temperature).cpu())
    return torch.cat(out)


def answer(model, tokenizer, tasks, cfg, temperature, seed, samples=1, n=1, rm=None):
    """`samples` answers to each task, laid out sample-major: answer s of task p at s * len(tasks) + p. With
    n > 1 each answer is best-of-n: n samples, the one the reward model scores highest, where a sample that
    never ended scores cfg.no_eos_penalty (PPO's rule, so best-of-n and PPO are judged by the same reward).

    Returns dict(texts, tokens (S*P, N), prompts, eos, rm (S*P,) or None, all_rm (S, n, P) or None)."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    P = len(tasks)
    instructions = [t.prompt for t in tasks] * (samples * n)            # draw j of task p at j*P + p
    out = respond(model, tokenizer, instructions, cfg.max_new_tokens, temperature, generator=g,
                  batch_size=cfg.batch_size)
    scores = None
    if rm is not None:
        raw = reward_scores(rm, tokenizer, instructions, out.texts, cfg.batch_size)
        scores = penalise_unfinished(raw, torch.tensor(out.eos), cfg.no_eos_penalty)
    pick = list(range(samples * P))
    if n > 1:
        best = scores.view(samples, n, P).argmax(1)                         # (S, P) best of each group of n
        pick = [(s * n + int(best[s, p])) * P + p for s in range(samples) for p in range(P)]
    return {"texts": [out.texts[i] for i in pick], "tokens": out.tokens[pick],
            "eos": [out.eos[i] for i in pick], "prompts": [out.prompts[i] for i in pick],
            "rm": scores[pick] if scores is not None else None,
            "all_rm": scores.view(samples, n, P) if scores is not None else None}


def per_kind(tasks, scores):
    """Mean score per task kind (per family for conversations)."""
    by_kind = {}
    for t, s in zip(tasks, scores):
        by_kind.setdefault(t.get("family") or t.kind, []).append(s)
    return {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}


# ======== read this first: the judging: gold score and mistakes per answer, paired gains, win rates ========
def report(world, tasks, ans, probe_tasks, probe_ans, pad_id, val_loss, kl):
    """The numbers of one system, in the JSON's shape, plus the gold score of every answer and of every
    probe answer (for gains and win rates) and the mistakes judge.mistakes names in every answer. tasks[i] is
    the task answers[i] answers (each test task once per sample)."""
    gold = [world.gold_score(t, text) for t, text in zip(tasks, ans["texts"])]
    lengths = [sum(1 for tok in row if tok != pad_id) - int(e)
               for row, e in zip(ans["tokens"].tolist(), ans["eos"])]
    probe = ([world.gold_score(t, text) for t, text in zip(probe_tasks, probe_ans["texts"])] if probe_ans
             else [])
    named = [mistakes(t, text) for t, text in zip(tasks, ans["texts"])]
    counts = {kind: sum(kind in found for found in named) for kind in MISTAKE_KINDS}
    return {
        "gold_mean": sum(gold) / len(gold),
        "per_task": per_kind(tasks, gold),
        "exact_match": sum(s == 1.0 for s in gold) / len(gold),
        "eos_rate": sum(ans["eos"]) / len(gold),
        "mean_len": sum(lengths) / len(lengths),
        "pretrain_val_loss": val_loss,
        "kl_to_ref": kl,
        "rm_score": ans["rm"].mean().item() if ans["rm"] is not None else None,
        "probe_gold_mean": sum(probe) / len(probe) if probe else None,
        "probe_per_task": per_kind(probe_tasks, probe) if probe else None,
        "n_responses": len(gold),
        "mistake_counts": counts,
        "right_rate": sum(map(fact_right, named)) / len(named),
    }, gold, probe, named


def fact_right(found):
    """The asked fact answered, whatever the style: none of judge.FACT_MISTAKES (a wrong answer, ...)."""
    return float(not set(found) & set(FACT_MISTAKES))


def with_intervals(results, gold, probe_gold, baseline, samples, seed):
    """Add to each system's results: its gold mean's 95% interval, and against the baseline the paired gain
    and the win rate with theirs (on test and probe prompts), by bootstrap over prompts. gold[system]: scores
    laid out sample-major (answer s of prompt p at s * P + p)."""
    def grid(scores):                                                            # -> (samples, P)
        return np.asarray(scores, dtype=np.float64).reshape(samples, -1)

    for system, r in results.items():
        a = grid(gold[system])
        r["gold_ci95"] = bootstrap_ci95(lambda x: x.mean(), a, seed=seed)
        if probe_gold[system]:
            r["probe_gold_ci95"] = bootstrap_ci95(lambda x: x.mean(), grid(probe_gold[system]), seed=seed)
        if system == baseline:
            continue
        b = grid(gold[baseline])
        r["gain_vs_baseline"], r["gain_ci95"] = mean_gain(a, b), bootstrap_ci95(mean_gain, a, b, seed=seed)
        r["win_rate_vs_baseline"] = win_fraction(a, b)
        r["win_rate_ci95"] = bootstrap_ci95(win_fraction, a, b, seed=seed)
        if probe_gold[system]:
            pa, pb = grid(probe_gold[system]), grid(probe_gold[baseline])
            r["probe_gain_vs_baseline"] = mean_gain(pa, pb)
            r["probe_gain_ci95"] = bootstrap_ci95(mean_gain, pa, pb, seed=seed)
# ======== end of read this first ========


# the kinds a checker can verify (minigpt/verifier.py), counted together too: what --reward=verifier targets
CHECKED_KINDS = ("arithmetic", "code")


def wrong_by_kind(results, wrong, kinds, baseline, samples, seed):
    """Add to each system's results its wrong answers (judge.mistakes' wrong_answer) per task kind and for
    CHECKED_KINDS together, and against the baseline how much it cuts them (minigpt.evaluation.wrong_cut)
    with a 95% interval by bootstrap over prompts. wrong[system]: 0/1 per answer, sample-major like gold;
    kinds: each answer's task kind."""
    groups = {k: {k} for k in sorted(set(kinds))} | {"+".join(CHECKED_KINDS): set(CHECKED_KINDS)}
    def grid(system, group):                                                    # -> (samples, P) of 0/1
        flags = [w if k in group else 0 for w, k in zip(wrong[system], kinds)]
        return np.asarray(flags, dtype=np.float64).reshape(samples, -1)

    for system, r in results.items():
        r["wrong_by_kind"] = {g: int(grid(system, ks).sum()) for g, ks in groups.items()}
        if system != baseline:
            r["wrong_cut_by_kind"] = {
                g: [wrong_cut(grid(system, ks), grid(baseline, ks)),
                    *bootstrap_ci95(wrong_cut, grid(system, ks), grid(baseline, ks), seed=seed)]
                for g, ks in groups.items()}


def finite(x):
    """NaN/inf -> None, so the JSON stays valid."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def pairwise(gold):
    """win_rates["A_vs_B"] = wins / (wins + losses) of A over B on the same prompts; tie_rates beside it."""
    wins, ties = {}, {}
    for a in gold:
        for b in gold:
            if a != b:
                wins[f"{a}_vs_{b}"], ties[f"{a}_vs_{b}"] = win_rate(gold[a], gold[b])
    return wins, ties


def fmt(x, spec=".3f"):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def print_table(results, wins, ties, baseline):
    names = list(results)
    w = max(10, *(len(n) for n in names))
    def ci(pair, spec=".3f"):
        return "" if pair is None else f"[{fmt(pair[0], spec)}, {fmt(pair[1], spec)}]"

    print(f"\n{'model':<{w}} {'gold [95% CI]':>21} {'gain vs ' + baseline + ' [95% CI]':>28} "
          f"{'win rate vs ' + baseline + ' [CI] (ties)':>30} {'exact':>6} {'eos':>5} {'len':>5} "
          f"{'val loss':>8} {'KL ref':>7} {'RM':>6} {'probe':>6}")
    for n in names:
        r = results[n]
        gain = "" if n == baseline else f"{fmt(r['gain_vs_baseline'], '+.3f')} {ci(r['gain_ci95'])}"
        win = "" if n == baseline else (f"{fmt(wins[f'{n}_vs_{baseline}'], '.2f')} "
                                        f"{ci(r['win_rate_ci95'], '.2f')} ({ties[f'{n}_vs_{baseline}']:.2f})")
        print(f"{n:<{w}} {fmt(r['gold_mean'])} {ci(r['gold_ci95']):>15} {gain:>28} {win:>30} "
              f"{fmt(r['exact_match'], '.2f'):>6} {fmt(r['eos_rate'], '.2f'):>5} "
              f"{fmt(r['mean_len'], '.1f'):>5} {fmt(r['pretrain_val_loss']):>8} "
              f"{fmt(r['kl_to_ref'], '.2f'):>7} {fmt(r['rm_score'], '.2f'):>6} "
              f"{fmt(r['probe_gold_mean']):>6}")
    kinds = sorted({k for r in results.values() for k in r["per_task"]})
    print(f"\n{'gold by task':<{w}} " + " ".join(f"{k:>13}" for k in kinds))
    for n in names:
        print(f"{n:<{w}} " + " ".join(f"{fmt(results[n]['per_task'].get(k)):>13}" for k in kinds))
    groups = list(results[names[0]].get("wrong_by_kind", {}))
    print(f"\n{'wrong answers':<{w}} " + " ".join(f"{k:>22}" for k in groups))
    for n in names:
        cut = results[n].get("wrong_cut_by_kind", {})
        print(f"{n:<{w}} " + " ".join(
            f"{results[n]['wrong_by_kind'][k]:>5}" + (f" {fmt(cut[k][0], '+.2f')} {ci(cut[k][1:], '.2f')}"
                                                      if k in cut else "").rjust(17) for k in groups))


def main(cfg):
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    # ---- load everything first: a bad folder stops the run before any work, and nothing is written ----
    specs = parse_models(cfg.models)
    loaded = {name: (folder, *load_model(folder, kind="lm", device=device)[:2]) for name, folder in specs}
    ref = load_model(cfg.ref, kind="lm", device=device)[:2] if cfg.ref else None
    rm = load_model(cfg.rm, kind="reward", device=device)[:2] if cfg.rm else None
    for name, (folder, model, tok) in loaded.items():
        if ref:
            check_same_tokenizer(tok, ref[1], f"{name} ({folder})", f"--ref={cfg.ref}")
        if rm:
            check_same_tokenizer(tok, rm[1], f"{name} ({folder})", f"--rm={cfg.rm}")
        model.eval()
    for m in (ref, rm):
        if m:
            m[0].eval()
    if cfg.best_of and cfg.best_of_model not in loaded:
        raise UserError(f"--best_of_model={cfg.best_of_model}: not among --models ({', '.join(loaded)})")
    baseline = cfg.baseline or specs[0][0]
    if baseline not in loaded:
        raise UserError(f"--baseline={baseline}: not among --models ({', '.join(loaded)})")

    world = World(cfg.world_seed)
    tasks = world.split(cfg.split)
    tasks = tasks[: cfg.n_prompts] if cfg.n_prompts else tasks
    probe = world.split("probe")[: cfg.n_prompts or None] if cfg.probe else []
    val_text = world.corpus_val()

    # ---- the systems: each model sampled (and greedy), plus best-of-N ----
    systems = []   # (name, model name, temperature, n)
    for name in loaded:
        if cfg.temperature > 0:
            systems.append((name, name, cfg.temperature, 1))
        if cfg.greedy or cfg.temperature == 0:
            systems.append((name if cfg.temperature == 0 else f"{name}_greedy", name, 0.0, 1))
    if cfg.best_of:
        systems.append((f"best_of_{cfg.best_of}", cfg.best_of_model, cfg.temperature, cfg.best_of))

    results, gold, probe_gold, answers, named, val_losses = {}, {}, {}, {}, {}, {}
    dtype = resolve_dtype(cfg.dtype, device)
    print(f"dtype: {dtype}")
    with autocast(str(device), dtype):   # every forward pass; log-probs and losses are taken in fp32
        for system, name, temperature, n in systems:
            folder, model, tok = loaded[name]
            if name not in val_losses:
                val_ids = torch.tensor(tok.encode(val_text)[: cfg.val_tokens + 1], dtype=torch.long)
                val_losses[name] = heldout_loss(model, val_ids, cfg.val_tokens)
            S = cfg.samples_per_prompt if temperature > 0 else 1            # greedy answers are all the same
            sampling = "greedy" if temperature == 0 else f"temperature {temperature}"
            print(f"evaluating {system} ({folder}, {sampling}, "
                  f"{S} per prompt{f', each the best of {n} by {cfg.rm}' if n > 1 else ''}) ...", flush=True)
            # Every model samples with the same seed. Best-of-n draws its own samples: with the seed of the
            # model it samples from, a prompt's first answer would often be that model's own first answer, a
            # tie by construction.
            seed = cfg.seed if n == 1 else random.Random(f"{cfg.seed}-{system}").randrange(2 ** 31)
            ans = answer(model, tok, tasks, cfg, temperature, seed, S, n, rm[0] if rm else None)
            probe_ans = (answer(model, tok, probe, cfg, temperature, seed + 1, S, n, rm[0] if rm else None)
                         if probe else None)
            kl, kl_bound = None, None
            if ref and temperature > 0:
                if n == 1:
                    logp, ref_logp = (logprobs_of_answers(m, ans, tok.pad_id, temperature, cfg.batch_size)
                                      for m in (model, ref[0]))
                    kl = sampled_kl(logp, ref_logp)                       # KL(π ‖ π_ref) on π's own answers
                elif os.path.samefile(folder, cfg.ref):
                    # estimated on the S*n samples of each prompt (their empirical distribution); the analytic
                    # value log n − (n−1)/n is only an upper bound: it assumes all samples differ, and short
                    # answers repeat
                    draws = ans["all_rm"].permute(2, 0, 1).reshape(len(tasks), -1).tolist()   # (P, S*n)
                    kl = sum(best_of_n_kl(d, n) for d in draws) / len(draws)
                    kl_bound = best_of_n_kl_bound(n)
            results[system], gold[system], probe_gold[system], named[system] = report(
                world, tasks * S, ans, probe * S, probe_ans, tok.pad_id, val_losses[name], kl)
            results[system].update(samples_per_prompt=S, kl_bound=kl_bound)
            # conversations: how often the follow-ups that need the earlier turn get the right fact
            follow = [p for p, t in enumerate(tasks) if t.get("family") in NEEDS_EARLIER]
            if follow:
                right = [fact_right(found) for found in named[system]]
                grid = np.asarray(right, dtype=np.float64).reshape(S, -1)[:, follow]
                interval = bootstrap_ci95(lambda x: x.mean(), grid, seed=cfg.seed)
                results[system].update(follow_up_right=grid.mean(), follow_up_right_ci95=interval)
            answers[system] = ans["texts"]
            if S != cfg.samples_per_prompt:                                 # pair greedy with every sample
                gold[system] = gold[system] * cfg.samples_per_prompt
                probe_gold[system] = probe_gold[system] * cfg.samples_per_prompt
                answers[system] = answers[system] * cfg.samples_per_prompt
                named[system] = named[system] * cfg.samples_per_prompt

    wins, ties = pairwise(gold)                                               # answer by answer
    P = len(tasks)
    per_prompt = {s: [sum(g[k * P + p] for k in range(cfg.samples_per_prompt)) / cfg.samples_per_prompt
                      for p in range(P)] for s, g in gold.items()}
    prompt_wins, prompt_ties = pairwise(per_prompt)                 # prompt by prompt (mean of its answers)
    with_intervals(results, gold, probe_gold, baseline, cfg.samples_per_prompt, cfg.seed)
    wrong = {s: [int(WRONG_ANSWER in found) for found in ms] for s, ms in named.items()}  # judged once
    kinds = [t.kind for t in tasks] * cfg.samples_per_prompt
    wrong_by_kind(results, wrong, kinds, baseline, cfg.samples_per_prompt, cfg.seed)
    print_table(results, wins, ties, baseline)
    samples = [{"instruction": t.instruction, "answer": t.answer, "kind": t.kind,
                "responses": {s: {"text": answers[s][i], "gold": gold[s][i]} for s in results}}
               for i, t in enumerate(tasks[: cfg.show])]
    for sample in samples:
        print(f"\n### {sample['instruction']!r}  (gold answer: {sample['answer']!r})")
        for s, r in sample["responses"].items():
            print(f"  {s:>14} [{r['gold']:.2f}] {r['text'][:120]!r}")
    out = {"models": results, "win_rates": wins, "tie_rates": ties, "prompt_win_rates": prompt_wins,
           "prompt_tie_rates": prompt_ties, "baseline": baseline, "split": cfg.split, "n_prompts": len(tasks),
           "n_probe_prompts": len(probe),
           "samples_per_prompt": cfg.samples_per_prompt,
           "temperature": cfg.temperature, "seed": cfg.seed, "dtype": dtype, "samples": samples,
           # every answer's gold score, sample-major (answer s of prompt p at s * n_prompts + p), for paired
           # comparisons of any two systems: minigpt.evaluation.bootstrap_ci95
           "scores": gold, "probe_scores": probe_gold}
    if cfg.json:
        write_json(cfg.json, finite(out))
        print(f"\nwrote {cfg.json}")


if __name__ == "__main__":
    run(main, Config)
