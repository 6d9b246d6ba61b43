"""Two runs of one world, compared: did a change (the dtype, a seed, a default) move any method's gain over
SFT by more than the evaluation's own noise can tell?

Two runs of the same world and split answer the same held-out prompts, S answers each (evaluate.py), so
the difference of a method's two gains gets an interval from the same bootstrap over prompts as each gain
(minigpt.evaluation.bootstrap_ci95), the prompts resampled jointly in both runs. The interval holds the
evaluation's noise only (which prompts, which samples); two trainings that differ by a seed differ by more,
so an interval that misses 0 says the runs differ, not yet that the change is why: compare two seeds too.

`python pipeline.py --compare=out/a,out/b` prints the table and writes <out_dir>/compare.json.
"""

import os

import numpy as np

from minigpt.checkpoint import write_json
from minigpt.cli import UserError
from minigpt.evaluation import bootstrap_ci95, mean_gain
from minigpt.frontier import label, read_run_file

SPLITS = {"eval": "single turns", "eval_dialogue": "conversations"}   # stage folder -> what it evaluates


def _scores(evaluation, name):
    """A model's gold scores as (S, P): answer s of prompt p at [s, p] (eval.json keeps them flat)."""
    S = evaluation["samples_per_prompt"]
    return np.asarray(evaluation["scores"][name], dtype=np.float64).reshape(S, -1)


def _same(a, b, key, where_a, where_b):
    if a[key] != b[key]:
        raise UserError(f"{where_a} has {key} {a[key]!r} and {where_b} has {b[key]!r}: only runs that "
                        "answered the same prompts can be compared")


def _gain_difference(a, sft_a, b, sft_b):
    return mean_gain(a, sft_a) - mean_gain(b, sft_b)


# For method m in runs A and B (gold scores a, s of m and SFT, each (S, P), on the same P prompts):
#   Δ = mean(a_A − s_A) − mean(a_B − s_B)     (each run's gain over its own SFT model)
#   95% interval: resample the P prompts, the same columns in both runs, 2,000 times
def compare_runs(folder_a, folder_b):
    """Two finished runs of one world and split -> {split: [a row per method both evaluated]}, each row
    dict(name, label, gain_a, ci95_a, gain_b, ci95_b, diff, diff_ci95, inside); inside: each gain lies in
    the other's 95% interval. One line naming the files when the runs did not answer the same prompts."""
    ra, rb = (read_run_file(os.path.join(f, "report.json"), ("world_seed", "eval_split"))
              for f in (folder_a, folder_b))
    for key in ("world_seed", "eval_split"):
        _same(ra, rb, key, folder_a, folder_b)
    result = {}
    for stage, split in SPLITS.items():
        pa, pb = (os.path.join(f, stage, "eval.json") for f in (folder_a, folder_b))
        if not (os.path.isfile(pa) and os.path.isfile(pb)):
            continue
        ea, eb = (read_run_file(p, ("models", "scores", "samples_per_prompt", "n_prompts", "baseline"))
                  for p in (pa, pb))
        for key in ("n_prompts", "samples_per_prompt"):
            _same(ea, eb, key, pa, pb)
        if ea["baseline"] != "sft" or eb["baseline"] != "sft":
            raise UserError(f"{pa}, {pb}: field 'baseline' must be 'sft' (gains are measured from SFT)")
        sft_a, sft_b = _scores(ea, "sft"), _scores(eb, "sft")
        rows = []
        for name in ea["scores"]:
            if name in ("sft", "pretrained") or name not in eb["scores"]:
                continue
            a, b = _scores(ea, name), _scores(eb, name)
            # each run's own interval, as its report gives it (evaluate.py's bootstrap, its seed)
            ci_a, ci_b = ea["models"][name]["gain_ci95"], eb["models"][name]["gain_ci95"]
            gain_a, gain_b = mean_gain(a, sft_a), mean_gain(b, sft_b)
            rows.append(dict(name=name, label=label(name), gain_a=gain_a, ci95_a=list(ci_a),
                             gain_b=gain_b, ci95_b=list(ci_b), diff=gain_a - gain_b,
                             diff_ci95=list(bootstrap_ci95(_gain_difference, a, sft_a, b, sft_b)),
                             inside=bool(ci_b[0] <= gain_a <= ci_b[1] and ci_a[0] <= gain_b <= ci_a[1])))
        result[split] = rows
    if not result:
        raise UserError(f"{folder_a}, {folder_b}: no evaluation that both runs finished (eval/eval.json)")
    return result


def table(result, name_a, name_b):
    """The comparison as markdown lines: per split, each method's gain in both runs and their difference
    (* where its interval misses 0)."""
    def ci(c):
        return f"[{c[0]:+.3f}, {c[1]:+.3f}]"
    lines = []
    for split, rows in result.items():
        lines += ["", f"{split}: gain over SFT in A = {name_a} and B = {name_b}", "",
                  "| method | A | B | A − B [95% CI] | each inside the other's interval |",
                  "|---|---|---|---|---|"]
        for r in rows:
            star = "" if r["diff_ci95"][0] <= 0 <= r["diff_ci95"][1] else " *"
            lines.append(f"| {r['label']} | {r['gain_a']:+.3f} {ci(r['ci95_a'])} | {r['gain_b']:+.3f} "
                         f"{ci(r['ci95_b'])} | {r['diff']:+.3f} {ci(r['diff_ci95'])}{star} | "
                         f"{'yes' if r['inside'] else 'no'} |")
    return lines + ["", "* the interval of A − B misses 0"]


def write_compare(out_dir, folder_a, folder_b):
    """compare_runs, written to <out_dir>/compare.json; returns the table's lines."""
    result = compare_runs(folder_a, folder_b)
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "compare.json"), {"a": folder_a, "b": folder_b, "splits": result})
    return table(result, folder_a, folder_b)
