"""The frontier: what each method gained in gold over the SFT model, against how far it moved from it.

One point per method, gold gain over SFT (y) against d = √KL(π || π_SFT) (x, nats^½, the axis of Gao et al.
2022 and of sweep.py), read from the report.json of one pipeline run or of several runs on fresh worlds.
The methods are the report's own rows ("models"), whatever they are: a new row (RLOO, a verifier run) is a
new point; only the pretrained model is left out (it is where SFT started, not a way of moving from SFT, and
its KL of ~30 nats would flatten every other point).

pipeline.py draws <out_dir>/frontier.png for its own run, and `pipeline.py --frontier=DIR,DIR,...` one figure
over several runs.
"""

import json
import math
import os
import re

from minigpt.checkpoint import write_json
from minigpt.cli import UserError

OFF_FRONTIER = ("pretrained",)
LABELS = {"sft": "SFT", "ppo": "PPO", "ppo_ptx": "PPO-ptx", "dpo": "DPO", "preferred_ft": "Preferred-FT",
          "grpo": "GRPO", "rloo": "RLOO", "ppo_verifier": "PPO, verifier reward"}


def label(name):
    """A report row's name as the README writes it; best_of_N -> best-of-N by RM; an unknown row as it is."""
    n = re.fullmatch(r"best_of_(\d+)", name)
    return f"best-of-{n.group(1)} by RM" if n else LABELS.get(name, name)


def read_run_file(path, keys=()):
    """One JSON file of a finished pipeline run -> dict; one line naming the file when it is missing, is not
    JSON, or lacks one of keys."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: not found (a folder of a finished pipeline.py run)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: line {e.lineno}: not JSON ({e.msg})") from None
    for key in keys:
        if key not in data:
            raise UserError(f"{path}: no field {key!r} (not a pipeline.py run's file)")
    return data


def load_reports(folders):
    """Each folder's report.json (a finished pipeline run) -> list of dicts. One line naming the file and
    field when one is missing or unreadable, or when two runs would not be fresh worlds of one kind of run."""
    reports = []
    for folder in folders:
        path = os.path.join(folder, "report.json")
        report = read_run_file(path, ("models", "world_seed", "eval_split"))
        if "sft" not in report["models"]:
            raise UserError(f"{path}: field 'models' has no 'sft' row: the frontier is measured from SFT")
        reports.append(dict(report, path=path))
    worlds = {}
    for r in reports:
        if r["world_seed"] in worlds:
            raise UserError(f"{worlds[r['world_seed']]} and {r['path']}: both world {r['world_seed']}; the "
                            "frontier's ranges are across fresh worlds, one run each")
        worlds[r["world_seed"]] = r["path"]
    for key in ("eval_split", "preset"):
        for r in reports[1:]:
            if r.get(key) != reports[0].get(key):
                raise UserError(f"{reports[0]['path']} has {key} {reports[0].get(key)!r} and {r['path']} has "
                                f"{r.get(key)!r}: one frontier compares one kind of run")
    return reports


# For each method m, over the k runs (one per world w) whose report has its row:
#   d      = mean_w √max(KL_w, 0)                (KL_w: its "kl_to_sft", the report's own sampled estimate;
#                                                 below 0 only by sampling noise)
#   gain   = mean_w g_w                          (g_w: its "gain_vs_sft", paired with its own world's SFT)
#   range  = [min_w g_w, max_w g_w]              (how far the worlds' gains lie apart; one run: the gain)
#   ci95   = [min_w lo_w, max_w hi_w]            ([lo_w, hi_w]: run w's 95% bootstrap interval over prompts;
#                                                 one run: exactly its interval)
# The drawn interval is the span of the worlds' own 95% intervals: it holds each world's sampling noise and
# the spread between worlds, and it widens, never narrows, as worlds are added (where a new world's gain may
# fall, not how well the mean is known). Not a t-interval of the mean: over 2 or 3 worlds t is 12.7 or 4.3,
# and the bar would show how little two numbers say of a spread more than anything about the methods.
# Best-of-n's KL: the report's "kl_to_sft" for it is estimated on the very samples it chose from (short
# answers repeat, so it moves less); the analytic log n − (n−1)/n ("kl_bound") is an upper bound, drawn
# beside it.
def frontier_points(reports):
    """One or more runs' report.json dicts -> one point per method (rows in the first report's order, rows
    only later reports have after them): dict(name, label, worlds, d, d_range, gain, gain_range, ci95,
    kl_bound_d)."""
    names = []
    for r in reports:
        names += [n for n in r["models"] if n not in names and n not in OFF_FRONTIER]
    points = []
    for name in names:
        rows = [(r["world_seed"], r["models"][name]) for r in reports if name in r["models"]]
        rows = [(w, m) for w, m in rows if m.get("kl_to_sft") is not None
                and (name == "sft" or m.get("gain_vs_sft") is not None)]
        if not rows:
            continue
        d = [math.sqrt(max(m["kl_to_sft"], 0.0)) for _, m in rows]
        # SFT is the origin: gain 0 against itself by definition
        g = [0.0 if name == "sft" else m["gain_vs_sft"] for _, m in rows]
        # a run's interval, or the gain itself where the report has none (SFT)
        ci = [m.get("gain_ci95") or [None] for _, m in rows]
        ci = [(x, x) if None in c else tuple(c) for x, c in zip(g, ci)]
        bounds = [m["kl_bound"] for _, m in rows if m.get("kl_bound") is not None]
        points.append(dict(name=name, label=label(name), worlds=[w for w, _ in rows],
                           d=sum(d) / len(d), d_range=[min(d), max(d)],
                           gain=sum(g) / len(g), gain_range=[min(g), max(g)],
                           ci95=[min(lo for lo, _ in ci), max(hi for _, hi in ci)],
                           kl_bound_d=math.sqrt(max(bounds)) if bounds else None))
    return points


def describe(reports):
    """'world 1, test split' / 'worlds 1, 2 (mean over them), test split' for the figure's title."""
    worlds = [r["world_seed"] for r in reports]
    which = (f"world {worlds[0]}" if len(worlds) == 1 else
             f"worlds {', '.join(map(str, worlds))} (the mean over them)")
    return f"{which}, {reports[0]['eval_split']} split"


def plot_frontier(path, points, title):
    """Gold gain over SFT (y) against √KL to SFT (x): each method's point, its 95% interval (thin, capped;
    several worlds: the span of their intervals), the range of the worlds' own points (thick) and, for
    best-of-n, a dotted line out to its analytic KL bound. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = any(len(p["worlds"]) > 1 for p in points)
    everywhere = max(len(p["worlds"]) for p in points)
    fig, ax = plt.subplots(figsize=(8, 5.6))
    for i, p in enumerate(points):
        color = f"C{i % 10}"
        lo, hi = p["ci95"]
        ax.errorbar([p["d"]], [p["gain"]], yerr=[[p["gain"] - lo], [hi - p["gain"]]], fmt="o", color=color,
                    ms=7, lw=1, capsize=4, zorder=3)
        if several:
            ax.plot([p["d"], p["d"]], p["gain_range"], color=color, lw=4, alpha=0.45, solid_capstyle="butt")
            ax.plot(p["d_range"], [p["gain"]] * 2, color=color, lw=4, alpha=0.45, solid_capstyle="butt")
        if p["kl_bound_d"] is not None:
            ax.plot([p["d"], p["kl_bound_d"]], [p["gain"], p["gain"]], ":", color=color, lw=1.2)
            ax.plot([p["kl_bound_d"]], [p["gain"]], "|", color=color, ms=10)
        text = p["label"] + ("" if len(p["worlds"]) == everywhere else
                             f" (world {', '.join(map(str, p['worlds']))} only)")
        ax.annotate(text, (p["d"], p["gain"]), textcoords="offset points", xytext=(6, 7), fontsize=8,
                    color=color)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlim(left=-0.05)
    ax.set_xlabel("d = √KL to the SFT model (nats^½)")
    ax.set_ylabel("gold score: gain over the SFT model")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    legend = "bars: 95% bootstrap interval over prompts" + (
        " (the span of the worlds' intervals); thick: the worlds' own points" if several else "")
    if any(p["kl_bound_d"] is not None for p in points):
        legend += "\ndotted to |: best-of-n at its analytic KL bound log n − (n−1)/n"
    ax.text(0.01, 0.99, legend, transform=ax.transAxes, ha="left", va="top", fontsize=7, color="dimgrey")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)                                                     # atomic: never half a PNG


def table(points):
    """The figure's numbers as text lines (pipeline.py --frontier prints them)."""
    lines = [f"{'method':<18} {'worlds':<8} {'√KL':>5} {'√KL range':>12} {'gain':>7} {'gain range':>16} "
             f"{'95% interval':>16}"]
    for p in points:
        lines.append(f"{p['label']:<18} {','.join(map(str, p['worlds'])):<8} {p['d']:5.2f} "
                     f"{p['d_range'][0]:5.2f}–{p['d_range'][1]:<5.2f} {p['gain']:+7.3f} "
                     f"{p['gain_range'][0]:+.3f}–{p['gain_range'][1]:<+7.3f} "
                     f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]")
    return lines


def write_frontier(out_dir, folders):
    """pipeline.py --frontier: the runs' report.json files -> out_dir/frontier.png and frontier.json (the
    points, and which reports they came from); returns the points."""
    reports = load_reports(folders)
    points = frontier_points(reports)
    os.makedirs(out_dir, exist_ok=True)
    title = f"Gold gained against distance from SFT: {describe(reports)}"
    plot_frontier(os.path.join(out_dir, "frontier.png"), points, title)
    write_json(os.path.join(out_dir, "frontier.json"), {
        "runs": [{"report": r["path"], "world_seed": r["world_seed"], "seed": r.get("seed"),
                  "commit": r.get("commit"), "eval_split": r["eval_split"]} for r in reports],
        "forms": {"d": "mean over worlds of sqrt(max(kl_to_sft, 0))",
                  "gain": "mean over worlds of gain_vs_sft",
                  "gain_range": "min and max over worlds of gain_vs_sft",
                  "ci95": "lowest and highest end of the worlds' gain_ci95 (one run: its gain_ci95)",
                  "kl_bound_d": "sqrt of best-of-n's analytic KL bound"},
        "points": points})
    return points
