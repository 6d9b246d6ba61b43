"""People rank answers in the browser (serve.py's ranking tab, minigpt/serve_page.html): the label file
they write, in label.py's format, and what the tab shows them.

One prompt's K answers from the served models are shown (which model wrote which is not: the person ranks
blind, as InstructGPT's labellers did); the person orders them, ties allowed, as groups best first:
[["7"], ["It is 7.", "seven"], ["8"]]. The ranking is checked against the answers that were shown and
appended to the label file as ONE JSON line that train_rm.py and train_dpo.py read unchanged (--data):
    {"prompt": ..., "responses": [best, ..., worst], "labeler": "ada", "tied": [[...], ...],
     "models": [model of each response], "source": "page", "time": unix seconds,
     "gold": [...], "kind": ...}          # the last two only for a prompt of the built-in world

The file is only ever replaced whole (a temporary file, fsync, os.replace): an append or an undo happens
entirely or not at all. A file that is not whole (a last line without its newline, a line that is not a
JSON object: a crash of something else mid-write, a hand edit) is refused with one line naming the line,
and nothing is written until it is fixed.
"""

import json
import math
import os
import random
import threading
import time
import uuid
from collections import OrderedDict

from minigpt.chat_api import parse_request
from minigpt.cli import UserError
from minigpt.data import clean_text
from minigpt.serving import ApiError

MAX_NAME = 60          # characters of a labeller's name
SHOWN_KEPT = 1000      # answer sets remembered for ranking (the oldest forgotten first)


class LabelFileError(UserError):
    """The label file is not whole: one line naming the file and line; nothing is written."""


def short(text, n=40):
    return json.dumps(text if len(text) <= n else text[:n] + "…", ensure_ascii=False)


def check_labeler(name):
    """A labeller's name: 1..MAX_NAME printable characters, surrounding spaces dropped. Raises ValueError."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("'labeler' must be your name (a non-empty text)")
    name = name.strip()
    if len(name) > MAX_NAME or not name.isprintable():
        raise ValueError(f"'labeler' must be at most {MAX_NAME} printable characters, got {short(name)}")
    return name


# Ties: label.py's format is a strict order, best..worst, and train_rm.py / train_dpo.py learn every pair in
# it; two tied answers are not a pair to learn. So a tied group keeps its first answer in "responses" (as
# world.SimulatedLabeler keeps one of equally good answers) and the others go beside it in "tied", which the
# trainers pass over: one JSON line per ranking, no pair taught twice, nothing the person said lost.
def ranking_record(shown, groups, labeler, world=None):
    """The JSON line of a ranking of the answers `shown` ({"prompt", "answers", "models"}): groups of answer
    texts, best first, the answers of a group tied. Raises ValueError (one line) unless every answer shown
    is placed exactly once and there are at least two groups."""
    answers = shown["answers"]
    if not isinstance(groups, list) or not all(
            isinstance(g, list) and g and all(isinstance(t, str) for t in g) for g in groups):
        raise ValueError("'ranking' must be a list of groups, best first, each a non-empty list of "
                         "answer texts")
    placed = set()
    for g in groups:
        for text in g:
            if text not in answers:
                raise ValueError(f"unknown answer {short(text)}: not one of the {len(answers)} answers shown "
                                 "for this prompt")
            if text in placed:
                raise ValueError(f"answer {short(text)} is ranked twice")
            placed.add(text)
    missing = [a for a in answers if a not in placed]
    if missing:
        raise ValueError(f"answer {short(missing[0])} is not ranked: give every answer shown a place")
    if len(groups) < 2:
        raise ValueError("every answer is tied: nothing to learn from this prompt "
                         "(get other answers instead)")
    best = [g[0] for g in groups]
    record = {"prompt": shown["prompt"], "responses": best, "labeler": labeler,
              "tied": [g[1:] for g in groups], "models": [shown["models"][answers.index(a)] for a in best],
              "source": "page", "time": int(time.time())}
    try:                            # a prompt of the built-in world: how its judge scores each (not shown)
        task = world.task(shown["prompt"]) if world is not None else None
    except KeyError:
        task = None
    if task is not None:
        record["gold"] = [world.gold_score(task, a) for a in best]
        record["kind"] = task.kind
    return record


class LabelFile:
    """A JSON-lines label file that rankings are appended to and undone from, each change atomic."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()      # the server answers requests in threads
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.read()                       # a file that is not whole is refused at once

    def read(self):
        """-> (bytes, [(offset of the line, record)]). Raises LabelFileError when the file is not whole."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return b"", []
        lines = data.split(b"\n")
        if lines[-1]:
            raise LabelFileError(f"{self.path}:{len(lines)}: the last line has no newline (half-written?); "
                                 "complete or remove it: nothing is written until then")
        out, offset = [], 0
        for n, line in enumerate(lines[:-1], 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    raise LabelFileError(f"{self.path}:{n}: not a JSON object (half-written?); fix or remove "
                                         "this line: nothing is written until then")
                out.append((offset, record))
            offset += len(line) + 1
        return data, out

    def records(self):
        with self.lock:
            return [r for _, r in self.read()[1]]

    def _replace(self, data):
        tmp = f"{self.path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)        # atomic: readers see the old file or the new one, never a mix

    def append(self, record):
        """Add one line -> the number of rankings in the file now."""
        with self.lock:
            data, lines = self.read()
            self._replace(data + json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
            return len(lines) + 1

    def undo(self, labeler):
        """Remove the last line, if `labeler` wrote it -> (the removed record, the number left)."""
        with self.lock:
            data, lines = self.read()
            if not lines:
                raise ValueError(f"{self.path} holds no ranking to undo")
            offset, last = lines[-1]
            if last.get("labeler") != labeler:
                raise ValueError(f"the last ranking in {self.path} is by {short(str(last.get('labeler')))}, "
                                 f"not by {short(labeler)}: only its labeller can undo it")
            self._replace(data[:offset])
            return last, len(lines) - 1


# ---- the tab: answers to show, rankings to take ---------------------------------------------------------

class RankingTab:
    """serve.py's /rank/* endpoints: each method takes the request's JSON body and returns the answer's, or
    raises ApiError."""

    def __init__(self, served, cfg, world):
        self.served, self.cfg, self.world = served, cfg, world
        self.file = LabelFile(cfg.label_file)
        self.shown = OrderedDict()        # id -> {"prompt", "answers", "models"}, until ranked
        self.rng = random.Random()

    def history(self, last=10):
        records = self.file.records()
        return {"label_file": self.file.path, "count": len(records), "labeler": self.cfg.labeler,
                "k": self.cfg.rank_k, "last": records[::-1][:last]}

    def sample(self, body):
        """{"prompt": text, or "" for one of the world's labelling prompts} -> {"id", "prompt", "answers"}."""
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a text", "prompt")
        # No prompt typed: one of the world's rm-split prompts (those label.py ranks, never test or dev ones)
        # not ranked in this file yet: the rankings then join the simulated ones on the same footing, gold
        # scores and all, and no held-out prompt is ever trained on.
        prompt = prompt.strip() or self.draw_prompt()
        answers, models = sample_answers(self.served, self.cfg, prompt, self.cfg.rank_k)
        sid = uuid.uuid4().hex[:16]
        self.shown[sid] = {"prompt": prompt, "answers": answers, "models": models}
        while len(self.shown) > SHOWN_KEPT:
            self.shown.popitem(last=False)
        return {"id": sid, "prompt": prompt, "answers": answers}

    def draw_prompt(self):
        done = {r.get("prompt") for r in self.file.records()}
        left = [t.instruction for t in self.world.split("rm")      # single turns: the page asks one message
                if t.kind != "dialogue" and t.instruction not in done]
        if not left:
            raise ApiError(400, "every labelling prompt of the built-in world is ranked: type a prompt",
                           "prompt")
        return self.rng.choice(left)

    def submit(self, body):
        """{"id", "ranking": [[text, ...], ...] best first, "labeler"} -> {"count", "record"}."""
        shown = self.shown.get(body.get("id"))
        if shown is None:
            raise ApiError(400, "unknown answers id (already ranked, or the server restarted): "
                                "get answers again", "id")
        try:
            labeler = check_labeler(body.get("labeler") or self.cfg.labeler)
            record = ranking_record(shown, body.get("ranking"), labeler, self.world)
        except ValueError as e:
            raise ApiError(400, str(e), "ranking") from None
        count = self.file.append(record)
        self.shown.pop(body.get("id"), None)      # ranked once: a second click does not add it again
        return {"count": count, "record": record}

    def undo(self, body):
        """{"labeler"} -> {"count", "removed"}: the file's last ranking removed, if it is this labeller's."""
        try:
            removed, count = self.file.undo(check_labeler(body.get("labeler") or self.cfg.labeler))
        except ValueError as e:
            raise ApiError(400, str(e), "labeler") from None
        return {"count": count, "removed": removed}


def sample_answers(served, cfg, prompt, k):
    """Up to k different answers to prompt (compared as train_rm.py will read them, after clean_text; empty
    ones left out) -> (answers, the model of each). Every served model samples 2 * ceil(k / models) of them
    at temperature 1 in one request to its worker; they are taken in turn, one model then the next."""
    n = min(cfg.max_n, 2 * math.ceil(k / len(served)))
    requests = []
    for name in served:
        body = {"model": name, "messages": [{"role": "user", "content": prompt}], "n": n, "temperature": 1.0}
        s, req, _, _ = parse_request(body, served, cfg)
        s.queue.put(req)
        requests.append((name, req))
    texts = {}
    for name, req in requests:
        while (news := req.events.get())[0] != "done":
            if news[0] == "error":
                raise news[1]
        texts[name] = [c["text"] for c in req.choices]
    answers, models, seen = [], [], set()
    for i in range(n):
        for name in served:
            key = clean_text(texts[name][i])
            if key and key not in seen and len(answers) < k:
                seen.add(key)
                answers.append(texts[name][i])
                models.append(name)
    return answers, models
