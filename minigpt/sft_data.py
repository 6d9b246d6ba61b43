"""SFT's demonstrations: conversations [(role, text), ...] whose assistant turns SFT learns (a single turn:
[("user", instruction), ("assistant", response)]), from one of three sources (train_sft.py picks one):

  world_demonstrations      the built-in world's simulated demonstrators, one per task of a split (with
                            probability --error_rate, one of their habits: minigpt/demonstrators.py)
  file_demonstrations       a file of your own (JSON list, Alpaca, JSONL: minigpt/data.py reads and cleans it)
  preferred_demonstrations  Preferred-FT: the top-ranked response of each ranking of label.py (or of a
                            comparisons file), the same rankings the reward model and DPO learn from
"""

import os
import sys

from minigpt.cli import UserError
from minigpt.data import as_conversation, clean_demonstrations, load_demonstrations
from minigpt.rankings import load_rankings


def world_demonstrations(world, split, rng, error_rate):
    """One demonstration per task of the split, and how many contain a mistake. A conversation's earlier
    answers are the world's (right ones); the demonstrator writes the last."""
    conversations, mistakes = [], 0
    for task in world.split(split):
        response, mistake = world.demonstration(task, rng, error_rate=error_rate)
        conversations.append(as_conversation(task.prompt) + [("assistant", response)])
        mistakes += mistake is not None
    return conversations, mistakes


def file_demonstrations(path, max_chars, rng):
    """(train pairs, validation pairs) from a file: shuffled, 10% (at least 1) held out."""
    examples, _ = clean_demonstrations(load_demonstrations(path), max_chars, source=path)
    if not examples:
        raise UserError(f"{path}: no usable demonstrations left after cleaning")
    if len(examples) < 20:
        print(f"warning: only {len(examples)} demonstrations: expect memorisation, not learning",
              file=sys.stderr)
    # an Alpaca "input" goes into the user message as its "### Input:" block (minigpt.data.render_prompt)
    pairs = [[("user", e["instruction"] + (f"\n\n### Input:\n{e['input']}" if e.get("input") else "")),
              ("assistant", e["output"])] for e in examples]
    rng.shuffle(pairs)
    if len(pairs) == 1:
        print("warning: a single demonstration: validation loss is measured on it too", file=sys.stderr)
        return pairs, pairs
    n_val = max(1, round(0.1 * len(pairs)))
    return pairs[n_val:], pairs[:n_val]


def preferred_demonstrations(source, max_chars=2000):
    """(train pairs, validation pairs) for Preferred-FT: the best response of each ranking (label.py's folder,
    its train.jsonl and val.jsonl; or a comparisons file, every n-th ranking held out as in train_rm.py)."""
    if os.path.isdir(source):
        train_recs, val_recs = load_rankings(source)
    else:
        train_recs, val_recs = load_rankings("", data=source, max_chars=max_chars)
    train, val = ([as_conversation(r["prompt"]) + [("assistant", r["responses"][0])] for r in recs]
                  for recs in (train_recs, val_recs))
    if not train or not val:
        raise UserError(f"{source}: Preferred-FT needs rankings to train on and held-out ones to validate "
                        f"on; got {len(train)} and {len(val)}")
    return train, val
