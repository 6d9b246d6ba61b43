"""Answering chat requests in batches (serve.py is the HTTP side, minigpt/chat_api.py the request's checks and
the answer's shape).

One worker thread per model takes every pending request from its queue (up to --max_batch rows,
waiting --batch_wait_ms for stragglers) and groups them by (temperature, top_p); each group runs ONE generate
call for all its rows. Each sampled token goes to its request at once (streamed as a chunk); a row ends at
end-of-text, at its own max_tokens or when its client disconnects, and a request is answered as soon as its
own rows have ended, not when the batch's longest one has. Rows that end in the same step are scored by the
reward model together. A request with a seed is a group of its own with a generator seeded from it, so the
same seed gives the same answer whatever else arrives at the same time, streamed or not.
"""

import queue
import random
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from minigpt.scoring import reward_scores
from minigpt.sampling import generate
from minigpt.training import autocast

# What GET /health reports: generate() calls (one per batch: tests check batching), sampling steps, and
# requests whose client went away mid-answer.
STATS = {"generate_calls": 0, "decode_steps": 0, "cancelled": 0}
_COUNTER_LOCK = threading.Lock()


class ApiError(Exception):
    """A request the server refuses: HTTP status + OpenAI's error object."""

    def __init__(self, status, message, param=None, code=None, type="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(eq=False)   # compared (and hashed) by identity: two requests are never "equal"
class Request:
    """One validated chat completion request on its way through a model's worker."""
    prompt: list                 # token ids of the rendered conversation (minigpt.data.fit_conversation)
    conversation: list           # [(role, text), ...] ending with the user message: what the answer is
                                 # for, as the reward model is told it (all of it, dropped turns too)
    dropped_turns: int           # the oldest turns left out of the prompt to fit the context
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: object                 # int or None
    logprobs: bool
    top_logprobs: int
    # The worker's news for the handler, in order: ("token", choice, token_id, logprob entry or None),
    # ("finish", choice), then ("done",) once every choice has finished, or ("error", ApiError).
    events: queue.Queue = field(default_factory=queue.Queue)
    choices: list = field(default_factory=list)   # per choice: tokens, logprobs, finish_reason, text, reward
    cancelled: bool = False      # set by the handler when its client has gone: the worker stops its rows


class Served:
    """One loaded model, its queue of pending requests and the worker thread that answers them."""

    def __init__(self, name, folder, model, tokenizer, rm, max_batch=32, batch_wait_ms=5.0, dtype="float32"):
        self.name, self.folder, self.model, self.tokenizer, self.rm = name, folder, model, tokenizer, rm
        self.dtype = dtype                           # autocast is per thread: the worker enters it itself
        self.max_batch, self.batch_wait_ms = max_batch, batch_wait_ms
        self.block_size = model.config.block_size
        self.device = next(model.parameters()).device
        self.queue = queue.Queue()
        self.created = int(time.time())
        self.thread = threading.Thread(target=self.work, name=f"worker-{name}", daemon=True)

    def work(self):
        while True:
            requests = [self.queue.get()]
            rows = requests[0].n
            deadline = time.monotonic() + self.batch_wait_ms / 1000
            while rows < self.max_batch:
                try:
                    req = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                requests.append(req)
                rows += req.n
            groups = {}
            for req in requests:
                if req.cancelled:
                    continue
                key = (req.temperature, req.top_p, None if req.seed is None else id(req))
                groups.setdefault(key, []).append(req)
            for group in groups.values():
                for batch in self.split(group):
                    try:
                        self.answer(batch)
                    except Exception as e:
                        # a bug, not the request's fault: every unfinished request hears of it
                        error = ApiError(500, f"generation failed: {type(e).__name__}: {e}",
                                         type="server_error")
                        for req in batch:
                            if not all(c["finish_reason"] for c in req.choices):
                                req.events.put(("error", error))

    def split(self, group):
        """Batches whose longest prompt + largest max_tokens fit the context and whose rows fit max_batch."""
        batches, cur, longest, most, rows = [], [], 0, 0, 0
        for req in group:
            lo, mo = max(longest, len(req.prompt)), max(most, req.max_tokens)
            if cur and (lo + mo > self.block_size or rows + req.n > self.max_batch):
                batches.append(cur)
                cur, lo, mo, rows = [], len(req.prompt), req.max_tokens, 0
            cur.append(req)
            longest, most, rows = lo, mo, rows + req.n
        return batches + [cur]

    def answer(self, batch):
        """ONE generate call for every row (choice) of the batch. Each token goes to its request as it is
        sampled; a row ends at end-of-text, at its own max_tokens, or when its client has gone, and a request
        is answered as soon as all its rows have ended, whatever the rest of the batch still has to do."""
        tok = self.tokenizer
        seed = batch[0].seed if batch[0].seed is not None else random.SystemRandom().randrange(2 ** 63)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        rows = [(req, i) for req in batch for i in range(req.n)]   # row r of the batch is choice i of req
        for req in batch:
            req.choices = [{"tokens": [], "logprobs": [] if req.logprobs else None, "finish_reason": None}
                           for _ in range(req.n)]
        live = [True] * len(rows)
        want_logprobs = any(req.logprobs for req in batch)

        def on_token(token, logits):                  # token (B,), logits (B, V) at temperature 1
            logp = F.log_softmax(logits.float(), dim=-1) if want_logprobs else None
            ended = []
            for r, t in enumerate(token.tolist()):
                req, i = rows[r]
                if not live[r]:
                    continue
                if req.cancelled:                     # the client went away: free the row
                    live[r] = False
                    continue
                c = req.choices[i]
                if t == tok.eos_id:
                    c["finish_reason"] = "stop"
                else:
                    c["tokens"].append(t)
                    entry = self.token_entry(t, logp[r], req.top_logprobs) if req.logprobs else None
                    if req.logprobs:
                        c["logprobs"].append(entry)
                    req.events.put(("token", i, t, entry))
                    if len(c["tokens"]) == req.max_tokens:
                        c["finish_reason"] = "length"
                if c["finish_reason"]:
                    live[r] = False
                    ended.append((req, i))
            self.finish(ended)
            with _COUNTER_LOCK:
                STATS["decode_steps"] += 1
            return torch.tensor([not x for x in live])

        with _COUNTER_LOCK:
            STATS["generate_calls"] += 1
        with autocast(str(self.device), self.dtype):     # the reward model scores inside it too (finish)
            generate(self.model, [req.prompt for req, _ in rows], max(req.max_tokens for req in batch),
                     eos_id=tok.eos_id, pad_id=tok.pad_id, temperature=batch[0].temperature,
                     top_p=batch[0].top_p if batch[0].top_p < 1 else None, generator=generator,
                     on_token=on_token)
        with _COUNTER_LOCK:
            STATS["cancelled"] += sum(req.cancelled for req in batch)

    def finish(self, ended):
        """The choices that ended this step: their text, ONE reward model call for all of them, their news."""
        if not ended:
            return
        for req, i in ended:
            c = req.choices[i]
            c["text"] = self.tokenizer.decode(c["tokens"]).strip()
        if self.rm is not None:
            scores = self.rewards([req.conversation for req, _ in ended],
                                  [req.choices[i]["text"] for req, i in ended])
            for (req, i), score in zip(ended, scores):
                req.choices[i]["reward"] = score
        for req, i in ended:
            req.events.put(("finish", i))
        for req in dict.fromkeys(req for req, _ in ended):
            if all(c["finish_reason"] for c in req.choices):
                req.events.put(("done",))

    def token_entry(self, t, logp, top):
        """OpenAI's logprobs.content entry of token t, from logp (V,), the model's log-probabilities."""
        entry = self.token_bytes(t, logp[t])
        if top:
            values, ids = logp.topk(min(top, logp.size(-1)))
            entry["top_logprobs"] = [self.token_bytes(k, v) for k, v in zip(ids.tolist(), values.tolist())]
        else:
            entry["top_logprobs"] = []
        return entry

    def token_bytes(self, t, logprob):
        try:
            raw = self.tokenizer.enc.decode_single_token_bytes(t)
        except Exception:
            raw = b""
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": max(float(logprob), -9999.0),
                "bytes": list(raw)}

    def rewards(self, conversations, texts):
        return [round(float(s), 6) for s in reward_scores(self.rm, self.tokenizer, conversations, texts)]
