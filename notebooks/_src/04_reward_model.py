# %% [markdown]
# # 04 · The reward model (奖励模型)
#
# Demonstrations are expensive to write; *comparing* answers is cheap. InstructGPT's second step shows a
# labeller K responses to one prompt and asks for a ranking, best first (数据标注, data labelling). A
# reward model (RM) — the SFT network with its vocabulary output replaced by a single number — is then
# trained so that the better-ranked response of every pair gets the higher reward. PPO (notebook 05) will
# maximise that reward.
#
# This notebook: K responses to one prompt, ranked by a simulated labeller; the C(K,2) pairs; the pairwise
# loss by hand and by `minigpt.losses.rm_ranking_loss`; a short run of `label.py` + `train_rm.py`; and how the
# trained reward compares with the gold score on held-out responses.

# %%
import sys, os
sys.path.insert(0, os.path.abspath(".."))  # the repository root, so `import minigpt` works from notebooks/

import itertools, json, math, random, shutil, subprocess, tempfile, time
import torch
import torch.nn.functional as F
import matplotlib.pyplot as plt

torch.set_num_threads(2)
torch.manual_seed(0); random.seed(0)
%matplotlib inline

from minigpt.world import World, SimulatedLabeler
from minigpt.demonstrators import applicable_mistakes
from minigpt.data import render_prompt, encode_prompt_response, load_comparisons
from minigpt.losses import rm_ranking_loss
from minigpt.checkpoint import load_model
from minigpt.model import RewardModel
from minigpt.sampling import left_pad
from minigpt.evaluation import spearman
from minigpt.training import read_metrics

REPO = os.path.abspath("..")
work = tempfile.mkdtemp(prefix="minigpt_nb04_")   # every output of this notebook goes here
world = World(seed=0)

# Models this small train faster on one CPU thread: two threads spend longer synchronising than computing.
ENV = dict(os.environ, OMP_NUM_THREADS="1")

def run(script, *flags):
    """Run one of the repository's scripts like a terminal would; print the command and its last lines."""
    cmd = [sys.executable, script, *flags]
    print("$", " ".join(cmd[1:]))
    t0 = time.time()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV)
    print("\n".join(result.stdout.strip().splitlines()[-6:]))
    assert result.returncode == 0, result.stderr[-2000:]
    print(f"({time.time() - t0:.0f} s)\n")

# %% [markdown]
# ## 1. K responses to one prompt
#
# The world's simulated demonstrators answer a task correctly 40% of the time; the other 60% of their answers
# carry one named kind of mistake. Most are habits of style: a chatty preamble, a rambling tail, repeating the
# question, a broken format, the wrong language. Fewer are a wrong answer, or a refusal (declining a request
# the desk can serve). Take one prompt and one response of every kind that applies. The gold judge
# (`world.gold_score`, 0 to 1) says how good each one really is — the labellers' opinion, which the reward
# model must learn from rankings alone.

# %%
task = world.task("What is 3 + 5?")
rng = random.Random(0)
kinds = [None] + applicable_mistakes(task)
responses = [world.demonstrator_response(task, rng, kind) for kind in kinds]
mistake_of = dict(zip(responses, kinds))
K = len(responses)
print(f"prompt: {task.instruction!r}   (K = {K} responses)\n")
print(f"{'#':>2}  {'response':<42}{'mistake':<17}gold")
for i, (r, kind) in enumerate(zip(responses, kinds)):
    print(f"{i:>2}  {r!r:<42}{kind or '(none)':<17}{world.gold_score(task, r):.2f}")

# %% [markdown]
# ## 2. A labeller ranks them
#
# Human labellers disagree with each other on about a quarter of pairs (InstructGPT: 73–77% agreement). The
# simulated labeller copies that: it sorts by gold score plus random (Gumbel) noise, so that for two responses
# $P(i \text{ above } j) = \sigma\big((g_i - g_j)/T\big)$ with $T = 0.27$. Close calls are sometimes flipped;
# clear ones almost never.

# %%
labeler = SimulatedLabeler(seed=3)
order = labeler.rank(task, responses)              # indices, best -> worst (ties in gold are dropped)
ranked = [responses[i] for i in order]
for place, r in enumerate(ranked, 1):
    print(f"{place}. {r!r:<42} gold {world.gold_score(task, r):.2f}")

# %% [markdown]
# ## 3. One ranking = C(K,2) comparisons
#
# A ranking of K responses implies an order for every pair: $\binom{K}{2}$ comparisons from one labelling
# effort. InstructGPT's insight was to keep all pairs of a prompt together as **one** batch element: the K
# responses go through the reward model once, instead of once per pair, and the pairs of one prompt (which are
# strongly correlated) cannot over-fit the model when shuffled into different batches.

# %%
pairs = list(itertools.combinations(range(len(ranked)), 2))   # (w, l): w ranked above l
print(f"K = {len(ranked)} -> C(K,2) = {math.comb(len(ranked), 2)} pairs (winner > loser):")
for w, l in pairs:
    print(f"   {ranked[w]!r:<40} > {ranked[l]!r}")

# %% [markdown]
# ## 4. Building the models: pretrain → SFT → labels → reward model
#
# Now the real scripts, tiny. The first two stages are as in notebook 03 (with a longer SFT and no evaluation
# during it). Then:
#
# * `label.py` takes 400 of the world's `rm` prompts; for each, 2 responses sampled from the SFT model and 4
#   from the demonstrators (different mistakes), ranked by the simulated labeller; 15% of prompts are held out
#   (`--k_decorated`, policy samples wrapped in a preamble or a rambling tail, is switched off to keep it
#   small);
# * `train_rm.py` starts the reward model from the SFT weights (the head at zero, so every reward starts at 0)
#   and trains it on the rankings. Here for one epoch at a high learning rate, to save time; the default run
#   trains 6 epochs, the trunk at a gentle lr 1e-4 and the head, which starts at 0 and has everything to
#   learn, at 1e-2 (`train_rm.py --epochs --lr --head_lr`): fine-tuned hard, a reward model forgets what the
#   SFT model it starts from knows, and PPO on it gains less (measured in the README).

# %%
corpus_file = os.path.join(work, "corpus.txt")
with open(corpus_file, "w", encoding="utf-8") as f:
    f.write(world.corpus(n_chars=400_000))
d = {name: os.path.join(work, name) for name in ("pretrain", "sft", "labels", "rm")}
run("train_pretrain.py", f"--data={corpus_file}", f"--out_dir={d['pretrain']}", "--vocab_size=512",
    "--tokenizer_chars=100000", "--n_layer=2", "--n_head=4", "--n_embd=48", "--block_size=96",
    "--batch_size=16", "--max_steps=150", "--lr=5e-3", "--warmup_steps=10", "--eval_interval=150",
    "--eval_batches=2", "--log_interval=60", "--device=cpu")
run("train_sft.py", f"--init={d['pretrain']}", f"--out_dir={d['sft']}", "--max_steps=200", "--batch_size=16",
    "--lr=3e-3", "--warmup_steps=10", "--dropout=0.0", "--eval_interval=200", "--eval_prompts=8",
    "--max_new_tokens=16", "--log_interval=60", "--eval_greedy=false", "--device=cpu")
run("label.py", f"--policy={d['sft']}", f"--out_dir={d['labels']}", "--n_prompts=400", "--k_policy=2",
    "--k_decorated=0", "--k_demo=4", "--max_new_tokens=16")
run("train_rm.py", f"--sft={d['sft']}", f"--labels={d['labels']}", f"--out_dir={d['rm']}", "--batch_size=8",
    "--epochs=1", "--lr=3e-3", "--warmup_steps=5", "--bias_prompts=50", "--eval_interval=10",
    "--log_interval=10", "--device=cpu")

# %% [markdown]
# One line of the labels file, as `label.py` wrote it (responses best → worst, with the gold scores the
# labeller never showed anyone):

# %%
with open(os.path.join(d["labels"], "train.jsonl"), encoding="utf-8") as f:
    rec = json.loads(f.readline())
print("prompt:", repr(rec["prompt"]), "  labeler:", rec["labeler"])
for text, gold, mistake, source in zip(rec["responses"], rec["gold"], rec["mistakes"], rec["sources"]):
    print(f"   {text!r:<42} gold {gold:.2f}  {source:<6} {mistake or ''}")

# %% [markdown]
# ## 5. The ranking loss, by hand and by minigpt
#
# The reward model reads prompt ⊕ response ⊕ end-of-text (the same template as SFT) and outputs the value
# of its scalar head at the last real token: $r_\theta(x, y)$. The InstructGPT loss for one prompt is
#
# $$\text{loss}(\theta) = -\frac{1}{\binom{K}{2}} \sum_{(y_w, y_l)}
# \log \sigma\big(r_\theta(x, y_w) - r_\theta(x, y_l)\big)$$
#
# — a logistic regression on reward *differences*: only the order matters, so adding a constant to every
# reward changes nothing (which is why `train_rm.py` is free to shift the bias so that demonstrations average
# 0, and to scale the head so that their rewards spread with standard deviation 1: PPO's β then means the
# same for every run). Score our ranked K responses with the trained reward model and compute the loss both
# ways:

# %%
rm, tok, _ = load_model(d["rm"], kind="reward")
rm.eval()

def rewards_for(model, instruction, texts):
    seqs = [encode_prompt_response(tok, render_prompt(instruction), t, model.config.block_size)[0]
            for t in texts]
    idx, mask = left_pad(seqs, tok.pad_id)                 # (K, T); score() reads the last real token
    with torch.no_grad():
        return model.score(idx, mask)                      # (K,)

r = rewards_for(rm, task.instruction, ranked)              # best -> worst
for text, value in zip(ranked, r.tolist()):
    print(f"r = {value:+.3f}   {text!r}")
# (Whether this tiny model orders this one prompt well is luck; section 6 measures it on held-out prompts.)

by_hand = -sum(math.log(1 / (1 + math.exp(-(r[w].item() - r[l].item())))) for w, l in pairs) / len(pairs)
by_minigpt = rm_ranking_loss(r).item()
print(f"\nby hand: {by_hand:.6f}   minigpt.losses.rm_ranking_loss: {by_minigpt:.6f}")
assert abs(by_hand - by_minigpt) < 1e-5

# %% [markdown]
# For comparison, a reward model fresh from the SFT weights (`RewardModel.from_gpt`, head at zero) gives every
# response reward 0, so every pair costs $-\log \sigma(0) = \ln 2 \approx 0.693$ — the loss of a coin flip:

# %%
sft, _, _ = load_model(d["sft"], kind="lm")
fresh = RewardModel.from_gpt(sft).eval()
r0 = rewards_for(fresh, task.instruction, ranked)
print("fresh rewards:", r0.tolist(), "  loss:", round(rm_ranking_loss(r0).item(), 6),
      "  ln 2 =", round(math.log(2), 6))

# %% [markdown]
# ## 6. Does the reward agree with the gold judge?
#
# The real test is on held-out prompts the reward model never trained on. For every held-out response we
# compute the reward and compare it with the gold score. `train_rm.py` printed the pair accuracy (how often
# the reward orders a held-out pair like the labeller did) next to two reference numbers: how often the labels
# themselves agree with gold (the **ceiling** — a reward model learns from noisy labels), and 0.5 (a coin).
# Spearman is printed twice: across all responses, and within each prompt (averaged). Comparisons only ever
# set two answers to the SAME prompt side by side, so they cannot teach one prompt's rewards against
# another's; the within-prompt number is what they can teach, and the labels' own within-prompt Spearman is
# its yardstick.
#
# Expect a modest result at this size: a 0.09M-parameter model trained for a few seconds on ~340 rankings
# learns the easy signals first (a correct demonstration beats a garbled policy sample; the wrong language is
# bad) and struggles with the subtle ones (a polite preamble around a right answer). The full run labels all
# of the world's `rm` prompts and uses a 4-layer model.

# %%
summary = json.load(open(os.path.join(d["rm"], "summary.json")))
for key in ("accuracy", "gold_accuracy", "ceiling", "labeler_agreement", "spearman", "spearman_within_prompt",
            "labels_spearman_within_prompt"):
    print(f"{key:<30} {summary[key]:.3f}")

val = load_comparisons(os.path.join(d["labels"], "val.jsonl"))
rewards, golds, sources = [], [], []
for rec in val:
    rewards += rewards_for(rm, rec["prompt"], rec["responses"]).tolist()
    golds += rec["gold"]
    sources += [m or "none" for m in rec["mistakes"]]
print(f"\n{len(rewards)} held-out responses; Spearman(reward, gold) = {spearman(rewards, golds):.3f}")

# %% [markdown]
# The picture: left, the reward model's held-out pair accuracy during training against the coin and the
# ceiling; right, reward against gold score for every held-out response, coloured by where it came from (a
# demonstrator's named mistake, `none` for a correct demonstration, `policy` for an imperfect SFT sample).
#
# Things to look for on the right: are the garbled policy samples (gold near 0) at the bottom? Where do the
# bare correct answers (`none`, gold 1) sit compared with the same answer wrapped in a preamble or a rambling
# tail? Small reward models readily pick up cheap features such as length instead of correctness. Whatever
# this reward model gets wrong, PPO will exploit in notebook 05 — which is why InstructGPT keeps the policy
# close to the SFT model with a KL penalty.

# %%
rows = read_metrics(os.path.join(d["rm"], "metrics.jsonl"))
# (step 0 is left out: every reward is 0 there, all pairs are tied and count as wrong)
acc = [(row["step"], row["val_accuracy"]) for row in rows if "val_accuracy" in row and row["step"] > 0]
gold_acc = [(row["step"], row["val_gold_accuracy"]) for row in rows
            if row.get("val_gold_accuracy") is not None and row["step"] > 0]

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
axes[0].plot(*zip(*acc), marker="o", label="vs held-out labels")
axes[0].plot(*zip(*gold_acc), marker="s", label="vs gold order")
axes[0].axhline(0.5, ls="--", c="gray", label="coin flip")
axes[0].axhline(summary["ceiling"], ls=":", c="k", label="labels vs gold (ceiling)")
axes[0].set_xlabel("step"); axes[0].set_ylabel("pair accuracy"); axes[0].set_ylim(0.3, 1.0)
axes[0].set_title("reward model: held-out pair accuracy"); axes[0].legend(fontsize=8)
for kind in sorted(set(sources)):
    pts = [(g + random.uniform(-0.015, 0.015), x) for g, x, s in zip(golds, rewards, sources) if s == kind]
    axes[1].scatter(*zip(*pts), s=12, alpha=0.6, label=kind)
axes[1].set_xlabel("gold score (jittered)"); axes[1].set_ylabel("reward r(x, y)")
axes[1].set_title(f"held-out responses: Spearman {spearman(rewards, golds):.2f}")
axes[1].legend(fontsize=7, markerscale=1.5, ncol=2); axes[1].grid(alpha=0.3)
plt.tight_layout(); plt.show()
shutil.rmtree(work, ignore_errors=True)  # the temporary stage folders are no longer needed
