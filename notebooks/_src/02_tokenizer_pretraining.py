# %% [markdown]
# # 02 · The tokenizer and pretraining (预训练)
#
# Before any instruction following, a GPT must learn the language and the facts of its world by predicting the
# next token of plain text: pretraining, the "large-scale unsupervised learning" (无监督学习) step that
# the seed article puts first in the recipe. That needs two things:
#
# 1. a **tokenizer** that turns text into integer ids — minigpt trains a byte-level BPE (byte pair encoding)
#    in Python (`minigpt.tokenizer.train_bpe`) and serves it with tiktoken;
# 2. a **training loop** that minimises the next-token cross-entropy — here the real `train_pretrain.py`,
#    run as a subprocess with tiny flags, exactly as you would run it from a terminal.
#
# Everything is written to a temporary folder; nothing in the repository changes.

# %%
import sys, os
sys.path.insert(0, os.path.abspath(".."))  # the repository root, so `import minigpt` works from notebooks/

import shutil, subprocess, tempfile, time
import torch
import matplotlib.pyplot as plt

torch.set_num_threads(2)
torch.manual_seed(0)
%matplotlib inline

from minigpt.tokenizer import Tokenizer, train_bpe, merges_readable, split_text
from minigpt.world import World
from minigpt.checkpoint import load_model
from minigpt.model import GPT
from minigpt.sampling import generate
from minigpt.training import read_metrics

REPO = os.path.abspath("..")
work = tempfile.mkdtemp(prefix="minigpt_nb02_")   # every output of this notebook goes here
world = World(seed=0)

# %% [markdown]
# ## 1. The text
#
# minigpt's toy "world" (`minigpt.world`) writes its own pretraining corpus: short sentences, in English and
# Chinese, that state the facts later instructions will ask about (French words, sums, spellings, shop hours).

# %%
corpus = world.corpus(n_chars=400_000)
print(f"{len(corpus):,} characters; the first lines:\n")
print(corpus[:600])

# %% [markdown]
# ## 2. BPE, merge by merge
#
# Byte-level BPE starts from the 256 possible bytes, so *any* string can be encoded — there is no "unknown
# token". It then repeatedly finds the most frequent adjacent pair of tokens and merges it into a new token.
# Before counting, a regular expression cuts the text into chunks (words with their leading space, single
# digits, punctuation runs, whitespace), and merges never cross a chunk boundary:

# %%
print(split_text("What is 17 + 25? 翻译成法语：你好"))

# %% [markdown]
# Note `'1', '7'`: minigpt's pattern makes **every digit a chunk of its own**, so numbers are always spelled
# digit by digit and "17" can never become one opaque token — arithmetic stays learnable.
#
# Now train BPE on a small slice of the corpus and print the first merges it learns.

# %%
small = corpus[:20_000]
ranks = train_bpe(small, vocab_size=256 + 200)      # 256 bytes + 200 merges
for i, line in enumerate(merges_readable(ranks, n=10), 1):
    print(f"merge {i:2d}: {line}")

# %% [markdown]
# The first merges glue a space to the letter after it (`' ' + 't'`) and frequent letter pairs, because those
# occur in almost every word. A `�` is a byte that is only part of a UTF-8 character: two of the first ten
# merges assemble the Chinese full stop `。` from its three bytes — byte-level BPE learns characters the
# same way it learns words. Watch one sentence get shorter as merges accumulate. A tokenizer that keeps only
# the first *k* merges is simply the rank table cut at 256 + k.

# %%
def pieces(tok, ids):
    """Each token id as readable text; a byte that is only part of a character is shown as <hex>."""
    out = []
    for i in ids:
        b = tok.enc.decode_single_token_bytes(i)
        try:
            out.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            out.append("".join(f"<{x:02x}>" for x in b))
    return out

sentence = "The French word for cat is chat."
by_rank = sorted(ranks, key=ranks.get)
for k in (0, 10, 50, 200):
    tok_k = Tokenizer({t: r for r, t in enumerate(by_rank[: 256 + k])})
    ids = tok_k.encode(sentence)
    print(f"{k:3d} merges, {len(ids):2d} tokens: " + "|".join(pieces(tok_k, ids)))

# %% [markdown]
# Fewer tokens per sentence means more text fits in the model's context window and each training step covers
# more of the corpus. The curve at the end of the notebook shows the compression: characters per token as
# merges are added. It starts below 1 because a Chinese character is 3 bytes, i.e. 3 tokens before any merge.

# %%
compression = []
for k in range(0, 201, 10):
    tok_k = Tokenizer({t: r for r, t in enumerate(by_rank[: 256 + k])})
    compression.append((k, len(small) / len(tok_k.encode(small))))
print("merges -> characters per token:", [(k, round(c, 2)) for k, c in compression[::5]])

# %% [markdown]
# ## 3. A tiny pretraining run
#
# `train_pretrain.py` trains the tokenizer (vocabulary 512, including the end-of-text and pad specials) and
# then a 2-layer GPT of width 48 for 150 steps. Its defaults describe a real run (4 layers, width 128, a
# vocabulary of 2048, a few minutes); the flags below shrink it to something a notebook can afford. The script
# writes a *stage folder*: `model.pt`, `tokenizer.json`, `metrics.jsonl`, and `summary.json` last.

# %%
corpus_file = os.path.join(work, "corpus.txt")
with open(corpus_file, "w", encoding="utf-8") as f:
    f.write(corpus)

pretrain_dir = os.path.join(work, "pretrain")
cmd = [sys.executable, "train_pretrain.py", f"--data={corpus_file}", f"--out_dir={pretrain_dir}",
       "--vocab_size=512", "--tokenizer_chars=100000", "--n_layer=2", "--n_head=4", "--n_embd=48",
       "--block_size=64", "--batch_size=16", "--max_steps=150", "--lr=5e-3", "--warmup_steps=10",
       "--eval_interval=25", "--eval_batches=2", "--log_interval=10", "--device=cpu", "--seed=1337"]
print("$", " ".join(cmd[1:]))
t0 = time.time()
# Models this small train faster on one CPU thread: two threads spend longer synchronising than computing.
result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, OMP_NUM_THREADS="1"))
print(result.stdout[-1500:], result.stderr[-1500:])
assert result.returncode == 0, "pretraining failed"
print(f"({time.time() - t0:.0f} s)")

# %% [markdown]
# ## 4. The trained tokenizer on two prompts
#
# The stage folder's tokenizer is the one every later stage uses. Two prompts — the seed article's own
# example and a sum:

# %%
model, tok, ckpt = load_model(pretrain_dir, kind="lm")
for text in ["翻译成法语：你好", "What is 3 + 5?"]:
    ids = tok.encode(text)
    print(f"{text!r}: {len(ids)} tokens")
    print("   ids:   ", ids)
    print("   pieces:", pieces(tok, ids))
    assert tok.decode(ids) == text            # byte-level BPE is lossless
print("\nspecial tokens: eos_id =", tok.eos_id, " pad_id =", tok.pad_id, " vocab_size =", tok.vocab_size)

# %% [markdown]
# The digits `3` and `5` are separate tokens, as promised. Chinese characters take 3 bytes each in UTF-8;
# those frequent in the corpus (它们在语料里常见) got merged into whole-character tokens, rarer ones
# remain as byte pieces shown as `<hex>` — still encodable, just longer.
#
# ## 5. What did pretraining buy? Samples before and after
#
# `minigpt.sampling.generate` continues a prompt token by token (temperature 0.8 here). A freshly initialised
# model with the same shape produces byte noise. After only 150 tiny steps the pretrained one is far from
# fluent, and few if any of its facts are right, but it has picked up pieces of the corpus: frequent words and
# phrases, both kinds of full stop (`.` and `。`), numbers and little sums. The full-size run
# (`python train_pretrain.py`: 4 layers of width 128, more steps) gets much further. Note also what
# pretraining alone never teaches: to *answer* an instruction rather than continue text. That is the job of
# supervised fine-tuning (监督学习, notebook 03).

# %%
untrained = GPT(model.config).eval()
prompts = ["The French word for", "The sum of 2 and", "In Python you write"]
encoded = [tok.encode(p) for p in prompts]
for name, m in [("before (random init)", untrained), ("after pretraining", model.eval())]:
    g = torch.Generator().manual_seed(0)
    out, _ = generate(m, encoded, max_new_tokens=20, eos_id=tok.eos_id, pad_id=tok.pad_id,
                      temperature=0.8, generator=g)
    print(f"--- {name}")
    for p, row in zip(prompts, out.tolist()):
        print(f"  {p!r} -> {tok.decode(row)!r}")

# %% [markdown]
# ## 6. The loss curve
#
# The loss is the mean cross-entropy $-\frac{1}{N}\sum_t \log p(x_{t+1} \mid x_{\le t})$ in nats. A uniform
# guess over 512 tokens costs $\ln 512 \approx 6.24$; the model starts there and falls quickly as it learns
# spellings, then frequent words, then facts. Validation text is held out from training, so a gap between the
# two curves would mean memorisation.

# %%
rows = read_metrics(os.path.join(pretrain_dir, "metrics.jsonl"))
train_pts = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
val_pts = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
axes[0].plot(*zip(*compression), marker="o", ms=3)
axes[0].set_xlabel("BPE merges"); axes[0].set_ylabel("characters per token")
axes[0].set_title("BPE compresses the text")
axes[1].plot(*zip(*train_pts), label="train")
axes[1].plot(*zip(*val_pts), marker="o", label="validation")
axes[1].axhline(torch.log(torch.tensor(float(tok.vocab_size))).item(), ls="--", c="gray",
                label="uniform guess")
axes[1].set_xlabel("step"); axes[1].set_ylabel("cross-entropy (nats)")
axes[1].set_title("pretraining loss"); axes[1].legend()
plt.tight_layout(); plt.show()
shutil.rmtree(work, ignore_errors=True)  # the temporary stage folders are no longer needed
