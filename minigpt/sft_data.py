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
from minigpt.data import DataError, as_conversation, clean_text, load_demonstrations, render_prompt
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


# Cleaning ("数据清洗" in the seed article: remove noise, keep data consistent; minigpt.data.clean_text)
def clean_demonstrations(examples, max_chars=1000, source="demonstrations"):
    """Normalise text, drop empty / duplicate / too-long examples -> (kept examples, stats dict).

    empty: instruction or output is blank after cleaning; duplicate: same (instruction, input, output) as an
    earlier example; too long: prompt + output longer than max_chars characters. Prints one summary line.
    """
    stats = {"read": len(examples), "empty": 0, "duplicates": 0, "too_long": 0, "kept": 0}
    kept, seen = [], set()
    for ex in examples:
        ex = {"instruction": clean_text(ex["instruction"]), "input": clean_text(ex.get("input", "")),
              "output": clean_text(ex["output"])}
        key = (ex["instruction"], ex["input"], ex["output"])
        if not ex["instruction"] or not ex["output"]:
            stats["empty"] += 1
        elif key in seen:
            stats["duplicates"] += 1
        elif len(render_prompt(ex["instruction"], ex["input"])) + len(ex["output"]) > max_chars:
            stats["too_long"] += 1
        else:
            seen.add(key)
            kept.append(ex)
    stats["kept"] = len(kept)
    print(f"cleaning: {stats['read']} read, {stats['empty']} empty, {stats['duplicates']} duplicates, "
          f"{stats['too_long']} too long, {stats['kept']} kept")
    if not kept:
        raise DataError(f"{source}: no examples left after cleaning ({stats['read']} read, "
                        f"{stats['empty']} empty, {stats['duplicates']} duplicates, "
                        f"{stats['too_long']} too long; max_chars={max_chars})")
    return kept, stats
