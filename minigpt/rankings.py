"""Ranked comparisons for the reward model, DPO and Preferred-FT: cleaning (what would teach nothing or
count twice is dropped, with one summary line) and the held-out split. A ranking is {"prompt", "responses":
[best, ..., worst]} plus optional parallel lists ("gold", "mistakes"), as label.py writes it or
minigpt/data.py reads a comparisons file."""

import os
import sys

from minigpt.cli import UserError
from minigpt.data import DataError, clean_text, load_comparisons, prompt_text, render_prompt


def _ranking_key(r):
    return r["prompt"], tuple(r["responses"])


def _clean_prompt(prompt):
    """clean_text on an instruction, or on each message of a conversation (an emptied one is dropped)."""
    if isinstance(prompt, str):
        return clean_text(prompt)
    messages = tuple((role, clean_text(text)) for role, text in prompt if clean_text(text))
    return messages if messages and messages[-1][0] == "user" else ""


def clean_rankings(records, max_chars=2000):
    """Normalise text (clean_text) and drop what would teach nothing or count twice -> (kept, stats dict).

    Within a ranking, empty responses and repeats of a higher-ranked response are dropped (with their entries
    in parallel lists such as "gold"); then a ranking is dropped when its prompt is empty or fewer than 2
    responses are left ("empty"; "alike" when what was left was one text repeated: chosen == rejected), when
    it repeats an earlier one (same prompt and responses), or when the prompt and its longest response exceed
    max_chars."""
    stats = {"read": len(records), "empty": 0, "alike": 0, "duplicates": 0, "too_long": 0, "kept": 0,
             "responses_dropped": 0}
    kept, seen = [], set()
    for r in records:
        n = len(r["responses"])
        texts = [clean_text(y) for y in r["responses"]]
        keep = [i for i, y in enumerate(texts) if y and y not in texts[:i]]
        r = {**{k: [v[i] for i in keep] if isinstance(v, list) and len(v) == n else v for k, v in r.items()},
             "prompt": _clean_prompt(r["prompt"]), "responses": [texts[i] for i in keep]}
        stats["responses_dropped"] += n - len(keep)
        if not r["prompt"] or len(keep) < 2:
            # fewer than 2 left of 2 or more non-empty responses: one text repeated
            stats["alike" if r["prompt"] and sum(map(bool, texts)) >= 2 else "empty"] += 1
        elif _ranking_key(r) in seen:
            stats["duplicates"] += 1
        elif len(render_prompt(prompt_text(r["prompt"]))) + max(map(len, r["responses"])) > max_chars:
            stats["too_long"] += 1
        else:
            seen.add(_ranking_key(r))
            kept.append(r)
    stats["kept"] = len(kept)
    return kept, stats


def _cleaning_line(stats):
    return (f"{stats['read']} read, {stats['empty']} empty, {stats['alike']} with all responses alike, "
            f"{stats['duplicates']} duplicates, {stats['too_long']} too long, {stats['kept']} kept "
            f"({stats['responses_dropped']} empty or repeated responses dropped)")


def _cleaned(path, max_chars):
    """The rankings of a comparisons file, or of several given comma-separated (e.g. label.py's simulated
    labels and a file people ranked in serve.py's page), read in that order and cleaned together."""
    kept, stats = clean_rankings([r for p in path.split(",") if p for r in load_comparisons(p)], max_chars)
    if not kept:
        raise DataError(f"{path}: no rankings left after cleaning ({_cleaning_line(stats)}; "
                        f"max_chars={max_chars})")
    return kept, stats


def load_rankings(labels, data="", val_data="", val_fraction=0.15, max_chars=2000):
    """-> (train, val) lists of {"prompt", "responses": [best..worst], optional "gold", "mistakes"}:
    label.py's folder (train.jsonl, val.jsonl), or a comparisons file `data` (held out: `val_data`, or every
    n-th one); `data` and `val_data` may each name several files, comma-separated.

    A file's rankings are cleaned first (clean_rankings; one summary line): duplicates go BEFORE the held-out
    split, so no copy lands on both sides of it; a --val_data ranking identical to a training one is
    dropped."""
    if data:
        records, stats = _cleaned(data, max_chars)
        line = f"cleaning rankings: {_cleaning_line(stats)}"
        if val_data:
            val, val_stats = _cleaned(val_data, max_chars)
            train_keys = {_ranking_key(r) for r in records}
            held_out = [r for r in val if _ranking_key(r) not in train_keys]
            print(f"{line}; held out: {_cleaning_line(val_stats)}, {len(val) - len(held_out)} also in "
                  "training dropped")
            if not held_out:
                raise DataError(f"{val_data}: every held-out ranking is also in {data}")
            return records, held_out
        print(line)
        every = max(2, round(1 / val_fraction))   # every n-th ranking is held out
        train = [r for i, r in enumerate(records) if i % every != every - 1]
        val = [r for i, r in enumerate(records) if i % every == every - 1]
        if not train or not val:
            raise UserError(f"{data}: {len(records)} rankings are too few to hold out every {every}-th (got "
                            f"{len(train)} to train on, {len(val)} held out): give --val_data=file, or a "
                            "larger --val_fraction")
        return train, val
    paths = [os.path.join(labels, name) for name in ("train.jsonl", "val.jsonl")]
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"{path}: not found; run label.py first (or give --data=comparisons.jsonl)")
    if not os.path.isfile(os.path.join(labels, "summary.json")):
        print(f"warning: {labels} has no summary.json: labelling did not finish", file=sys.stderr)
    return load_comparisons(paths[0]), load_comparisons(paths[1])
