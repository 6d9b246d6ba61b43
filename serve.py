"""Serve the stage folders over an OpenAI-compatible HTTP API (部署 / deployment, for programs rather than people).

    python serve.py                                       # every language-model stage folder under out/
    python serve.py --models=sft:out/sft,ppo:out/ppo      # name:folder pairs (a bare folder is named after itself)
    python serve.py --rm=out/rm --port=8000               # reward model scoring every answer (default: <out_dir>/rm if there; --rm= for none)

    curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "ppo", "messages": [{"role": "user", "content": "Add 3 and 4."}], "seed": 1}'

Built on the standard library's http.server.ThreadingHTTPServer: no new runtime dependency, so it installs
with the README's first command (pip install -r requirements-dev.txt).

Endpoints: GET / (the chat page, minigpt/serve_page.html: open http://127.0.0.1:8000/ in a browser to see
every stage answer the same prompt side by side, token by token, with each token's probability and the
reward), GET /health ({"status": "ok", "generate_calls": N, "models": [...]}), GET /v1/models, GET
/v1/models/<name>, POST /v1/chat/completions. Anything else is a 404 in OpenAI's error shape.

What a request means to these single-turn models: the instruction is the content of the LAST "user" message;
system/developer messages, earlier turns and assistant messages are ignored (the models were never trained
on them). Supported fields: model, messages, max_tokens (or max_completion_tokens), temperature (0 = greedy),
top_p, seed, n (<= --max_n), logprobs, top_logprobs (<= 20), stream, stream_options.include_usage. `stop`,
`tools` and `functions` are refused rather than silently ignored; other unknown fields are ignored.
Logprobs are the model's own log-probabilities (temperature 1, no top_p), as OpenAI reports them, computed
with one extra forward pass over prompt + answer; the end-of-text token is not listed and not counted in
usage.completion_tokens (usage.prompt_tokens counts the rendered prompt once, whatever n is).

Our own field, not OpenAI's: each choice carries "minigpt": {"reward": r} with the reward model's score of
the answer when --rm is loaded (also on the last streamed chunk of each choice).

Batching: one worker thread per model takes every pending request from its queue (up to --max_batch rows,
waiting --batch_wait_ms for stragglers) and groups them by (temperature, top_p); each group runs ONE generate
call for all its rows with the largest max_tokens in it, and each row is cut at its own max_tokens. A request
with a seed is a group of its own with a generator seeded from it, so the same seed gives the same answer
whatever else arrives at the same time. Streaming sends the answer token by token (chat.completion.chunk
events) once the batch has been generated: it is not yet incremental.
Nothing in a request names a file: models are chosen only from the names loaded at start.
"""

import json
import math
import os
import queue
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
import torch.nn.functional as F

from minigpt.checkpoint import check_same_tokenizer, load_model
from minigpt.cli import UserError, check, run
from minigpt.data import render_prompt
from minigpt.rollout import reward_inputs
from minigpt.sampling import generate
from minigpt.training import pick_device

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "minigpt", "serve_page.html")  # GET /
MAX_BODY = 1 << 20          # bytes of request body we accept
MAX_TOP_LOGPROBS = 20
GENERATE_CALLS = 0          # how many times generate() has run: GET /health reports it (tests check batching)
_COUNTER_LOCK = threading.Lock()


@dataclass
class Config:
    out_dir: str = field(default="out", metadata={"help": "serve every stage folder under this one holding a language model"})
    models: list = field(default_factory=list, metadata={"help": "name:folder pairs instead of scanning --out_dir"})
    rm: str = field(default="out/rm", metadata={"help": "reward model folder scoring every answer ('' = none; by default <out_dir>/rm when present)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    max_batch: int = field(default=32, metadata={"help": "most rows (answers) in one generate call"})
    batch_wait_ms: float = field(default=5.0, metadata={"help": "how long a worker waits for more requests to batch"})
    max_n: int = field(default=8, metadata={"help": "most choices (n) per request"})
    default_max_tokens: int = field(default=64, metadata={"help": "max_tokens when a request gives none"})
    device: str = field(default="cpu", metadata={"help": "auto, cpu, cuda or mps"})

    def validate(self):
        check(0 < self.port < 65536, f"--port must be in 1..65535, got {self.port}")
        check(self.max_batch >= 1, f"--max_batch must be >= 1, got {self.max_batch}")
        check(self.batch_wait_ms >= 0, f"--batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        check(self.max_n >= 1, f"--max_n must be >= 1, got {self.max_n}")
        check(self.default_max_tokens >= 1, f"--default_max_tokens must be >= 1, got {self.default_max_tokens}")


class ApiError(Exception):
    """A request the server refuses: HTTP status + OpenAI's error object."""

    def __init__(self, status, message, param=None, code=None, type="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---- models -----------------------------------------------------------------------------------------------

def find_stage_folders(out_dir):
    """name -> folder for every immediate subfolder of out_dir holding a model.pt (load_all keeps the language
    models among them)."""
    if not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: no such folder (run python pipeline.py first, or pass --models=name:folder)")
    return {name: os.path.join(out_dir, name) for name in sorted(os.listdir(out_dir))
            if os.path.isfile(os.path.join(out_dir, name, "model.pt"))}


def parse_models(items):
    found = {}
    for item in items:
        name, sep, folder = item.partition(":")
        if not sep:
            name, folder = os.path.basename(os.path.normpath(item)), item
        check(name and folder, f"--models: expected name:folder, got {item!r}")
        check(name not in found, f"--models: the name {name!r} is given twice")
        found[name] = folder
    return found


class Served:
    """One loaded model, its queue of pending requests and the worker thread that answers them."""

    def __init__(self, name, folder, model, tokenizer, rm, cfg):
        self.name, self.folder, self.model, self.tokenizer, self.rm, self.cfg = name, folder, model, tokenizer, rm, cfg
        self.block_size = model.config.block_size
        self.device = next(model.parameters()).device
        self.queue = queue.Queue()
        self.created = int(time.time())
        self.thread = threading.Thread(target=self.work, name=f"worker-{name}", daemon=True)

    # Each pending item: dict(prompt, n, max_tokens, temperature, top_p, seed, logprobs, top_logprobs,
    # instruction, done=Event, result=None|list of choices, error=None|Exception)
    def work(self):
        while True:
            items = [self.queue.get()]
            rows = items[0]["n"]
            deadline = time.monotonic() + self.cfg.batch_wait_ms / 1000
            while rows < self.cfg.max_batch:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                items.append(item)
                rows += item["n"]
            groups = {}
            for item in items:
                key = (item["temperature"], item["top_p"], None if item["seed"] is None else id(item))
                groups.setdefault(key, []).append(item)
            for group in groups.values():
                for batch in self.split(group):
                    try:
                        self.answer(batch)
                    except Exception as e:  # a bug, not the request's fault: every waiting request hears of it
                        for item in batch:
                            item["error"] = ApiError(500, f"generation failed: {type(e).__name__}: {e}",
                                                     type="server_error")
                    for item in batch:
                        item["done"].set()

    def split(self, group):
        """Batches whose longest prompt + largest max_tokens fit the context and whose rows fit max_batch."""
        batches, cur, longest, most, rows = [], [], 0, 0, 0
        for item in group:
            lo, mo = max(longest, len(item["prompt"])), max(most, item["max_tokens"])
            if cur and (lo + mo > self.block_size or rows + item["n"] > self.cfg.max_batch):
                batches.append(cur)
                cur, lo, mo, rows = [], len(item["prompt"]), item["max_tokens"], 0
            cur.append(item)
            longest, most, rows = lo, mo, rows + item["n"]
        return batches + [cur]

    def answer(self, batch):
        global GENERATE_CALLS
        tok = self.tokenizer
        first = batch[0]
        if first["seed"] is not None:
            generator = torch.Generator(device=self.device).manual_seed(first["seed"])
        else:
            generator = torch.Generator(device=self.device).manual_seed(random.SystemRandom().randrange(2 ** 63))
        prompts = [item["prompt"] for item in batch for _ in range(item["n"])]
        steps = max(item["max_tokens"] for item in batch)
        with _COUNTER_LOCK:
            GENERATE_CALLS += 1
        tokens, _ = generate(self.model, prompts, steps, eos_id=tok.eos_id, pad_id=tok.pad_id,
                             temperature=first["temperature"], top_p=first["top_p"] if first["top_p"] < 1 else None,
                             generator=generator)
        rows = tokens.tolist()
        r = 0
        for item in batch:
            choices = []
            for _ in range(item["n"]):
                row = [t for t in rows[r][: item["max_tokens"]] if t != tok.pad_id]
                r += 1
                ended = tok.eos_id in row
                if ended:
                    row = row[: row.index(tok.eos_id)]
                choices.append({"tokens": row, "text": tok.decode(row).strip(),
                                "finish_reason": "stop" if ended else "length"})
            if item["logprobs"]:
                for c in choices:
                    c["logprobs"] = self.token_logprobs(item["prompt"], c["tokens"], item["top_logprobs"])
            if self.rm is not None:
                scores = self.rewards([item["instruction"]] * len(choices), [c["text"] for c in choices])
                for c, s in zip(choices, scores):
                    c["reward"] = s
            item["result"] = choices

    @torch.no_grad()
    def token_logprobs(self, prompt, answer, top):
        """OpenAI's logprobs.content for the answer's tokens: the model's log-probabilities at temperature 1."""
        if not answer:
            return []
        ids = torch.tensor([prompt + answer], dtype=torch.long, device=self.device)
        logits = self.model(ids)[0, len(prompt) - 1: -1].float()              # (len(answer), V)
        logp = F.log_softmax(logits, dim=-1)
        chosen = logp.gather(1, torch.tensor(answer, device=self.device)[:, None]).squeeze(1).tolist()
        if top:
            top_v, top_i = logp.topk(min(top, logp.size(-1)), dim=-1)
            top_v, top_i = top_v.tolist(), top_i.tolist()
        out = []
        for k, t in enumerate(answer):
            entry = self.token_entry(t, chosen[k])
            entry["top_logprobs"] = [self.token_entry(i, v) for i, v in zip(top_i[k], top_v[k])] if top else []
            out.append(entry)
        return out

    def token_entry(self, t, logprob):
        try:
            raw = self.tokenizer.enc.decode_single_token_bytes(t)
        except Exception:
            raw = b""
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": max(float(logprob), -9999.0),
                "bytes": list(raw)}

    @torch.no_grad()
    def rewards(self, instructions, texts):
        idx, mask = reward_inputs(self.tokenizer, instructions, texts, self.rm.config.block_size)
        return [round(float(s), 6) for s in self.rm.score(idx.to(self.device), mask.to(self.device)).cpu()]


def load_all(cfg):
    device = pick_device(cfg.device)
    folders = parse_models(cfg.models) if cfg.models else find_stage_folders(cfg.out_dir)
    rm = rm_tokenizer = None
    rm_folder = cfg.rm
    if cfg.rm == Config.rm:  # the default: <out_dir>/rm, and only when it is there
        rm_folder = os.path.join(cfg.out_dir, "rm")
        rm_folder = rm_folder if os.path.isfile(os.path.join(rm_folder, "model.pt")) else ""
    if rm_folder:
        rm, rm_tokenizer, _ = load_model(rm_folder, kind="reward", device=device)
        rm.eval()
    served = {}
    for name, folder in folders.items():
        try:
            model, tokenizer, _ = load_model(folder, kind="lm", device=device)
        except UserError:
            if cfg.models:               # named on the command line: its error stands
                raise
            continue                     # found by scanning: the reward model, or not a model at all
        if rm is not None:
            check_same_tokenizer(tokenizer, rm_tokenizer, folder, rm_folder)
        served[name] = Served(name, folder, model.eval(), tokenizer, rm, cfg)
    if not served:
        raise UserError(f"{cfg.out_dir}: no stage folder holds a language model (model.pt of kind 'lm'); "
                        f"run python pipeline.py first, or pass --models=name:folder")
    return served, rm_folder


# ---- requests ---------------------------------------------------------------------------------------------

def _reject_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _int(body, key, default, low, high, what):
    value = body.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{key}' must be an integer, got {json.dumps(value)[:40]}", key)
    if not low <= value <= high:
        raise ApiError(400, f"'{key}' must be {what}, got {value}", key)
    return value


def _number(body, key, default):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, f"'{key}' must be a number, got {json.dumps(value)[:40]}", key)
    return float(value)


def _text(content, k):
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(p, str) for p in parts) and parts:
            return "".join(parts)
    raise ApiError(400, f"messages[{k}].content must be a string (or a list of text parts)", f"messages[{k}].content")


def parse_request(body, served, cfg):
    """Validate a chat completion request -> (Served, pending item, stream, include_usage). Raises ApiError."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, f"'model' is required: one of {', '.join(served)}", "model")
    if name not in served:
        raise ApiError(404, f"unknown model {name!r}; this server has: {', '.join(served)}", "model", "model_not_found")
    s = served[name]
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    instruction = None
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{k}] must be an object with a 'role' and a 'content'", f"messages[{k}]")
        if m["role"] == "user":
            instruction = _text(m.get("content"), k)
    if instruction is None:
        raise ApiError(400, "'messages' has no user message: the last user message is the instruction", "messages")
    for key in ("stop", "tools", "functions"):
        if body.get(key):
            raise ApiError(400, f"'{key}' is not supported by this server", key)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", "stream")
    logprobs = body.get("logprobs", False)
    if logprobs is None:
        logprobs = False
    if not isinstance(logprobs, bool):
        raise ApiError(400, "'logprobs' must be true or false", "logprobs")
    top = _int(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, f"between 0 and {MAX_TOP_LOGPROBS}")
    if top and not logprobs:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    temperature = _number(body, "temperature", 1.0)
    if temperature < 0:
        raise ApiError(400, f"'temperature' must be >= 0 (0 = greedy), got {temperature}", "temperature")
    top_p = _number(body, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise ApiError(400, f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    n = _int(body, "n", 1, 1, cfg.max_n, f"between 1 and {cfg.max_n}")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
        raise ApiError(400, "'seed' must be a non-negative integer", "seed")

    prompt = s.tokenizer.encode(render_prompt(instruction))
    if len(prompt) >= s.block_size:
        raise ApiError(400, f"the prompt is {len(prompt)} tokens; model {name!r} has a context of {s.block_size} "
                            f"tokens, which must hold the prompt and at least one answer token", "messages",
                       "context_length_exceeded")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    given = body.get(key)
    if given is None:
        max_tokens = min(cfg.default_max_tokens, s.block_size - len(prompt))
    else:
        max_tokens = _int(body, key, None, 1, 10 ** 12, "at least 1")
        if len(prompt) + max_tokens > s.block_size:
            raise ApiError(400, f"the prompt is {len(prompt)} tokens and {key} is {max_tokens}; together they exceed "
                                f"model {name!r}'s context of {s.block_size} tokens (at most "
                                f"{s.block_size - len(prompt)} for this prompt)", key, "context_length_exceeded")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    item = dict(prompt=prompt, instruction=instruction, n=n, max_tokens=max_tokens, temperature=temperature,
                top_p=top_p, seed=seed, logprobs=logprobs, top_logprobs=top, done=threading.Event(),
                result=None, error=None)
    return s, item, stream, include_usage


def completion(s, item, rid, created):
    choices = []
    for i, c in enumerate(item["result"]):
        choice = {"index": i, "message": {"role": "assistant", "content": c["text"]},
                  "logprobs": {"content": c["logprobs"]} if "logprobs" in c else None,
                  "finish_reason": c["finish_reason"]}
        if "reward" in c:
            choice["minigpt"] = {"reward": c["reward"]}
        choices.append(choice)
    return {"id": rid, "object": "chat.completion", "created": created, "model": s.name,
            "system_fingerprint": None, "choices": choices, "usage": usage(item)}


def usage(item):
    done = sum(len(c["tokens"]) for c in item["result"])
    return {"prompt_tokens": len(item["prompt"]), "completion_tokens": done,
            "total_tokens": len(item["prompt"]) + done}


def pieces(tokenizer, tokens, text):
    """Split the answer `text` into one delta per token, so that the deltas join to exactly `text`."""
    raw = tokenizer.decode(tokens)
    lead = len(raw) - len(raw.lstrip())
    out, shown = [], ""
    for k in range(1, len(tokens) + 1):
        prefix = tokenizer.decode(tokens[:k])
        if k < len(tokens) and prefix.endswith("\ufffd"):   # half a multi-byte character: wait for the rest
            out.append("")
            continue
        mapped = prefix[lead:][: len(text)]
        if k == len(tokens) or not mapped.startswith(shown):
            mapped = text if k == len(tokens) else shown
        out.append(mapped[len(shown):])
        shown = mapped
    return out


def chunks(s, item, rid, created, include_usage):
    """The chat.completion.chunk objects of a streamed answer, one per token per choice."""
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": s.name,
            "system_fingerprint": None}
    for i, c in enumerate(item["result"]):
        yield {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                    "finish_reason": None}]}
        for k, delta in enumerate(pieces(s.tokenizer, c["tokens"], c["text"])):
            lp = {"content": [c["logprobs"][k]]} if "logprobs" in c else None
            yield {**base, "choices": [{"index": i, "delta": {"content": delta}, "logprobs": lp,
                                        "finish_reason": None}]}
        last = {"index": i, "delta": {}, "logprobs": None, "finish_reason": c["finish_reason"]}
        if "reward" in c:
            last["minigpt"] = {"reward": c["reward"]}
        yield {**base, "choices": [last]}
    if include_usage:
        yield {**base, "choices": [], "usage": usage(item)}


# ---- HTTP -------------------------------------------------------------------------------------------------

def make_handler(served, cfg):
    with open(PAGE, "rb") as f:
        page = f.read()

    class Handler(BaseHTTPRequestHandler):
        server_version = "minigpt-serve"

        def log_message(self, fmt, *args):  # one short line per request on stderr
            print(f"{self.address_string()} {fmt % args}", file=sys.stderr, flush=True)

        def send_json(self, status, obj):
            data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def fail(self, err):
            self.send_json(err.status, err.body())

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/":
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                return self.wfile.write(page)
            if path == "/health":
                return self.send_json(200, {"status": "ok", "generate_calls": GENERATE_CALLS, "models": list(served)})
            if path == "/v1/models":
                return self.send_json(200, {"object": "list", "data": [model_card(s) for s in served.values()]})
            if path.startswith("/v1/models/"):
                name = path[len("/v1/models/"):]
                if name in served:
                    return self.send_json(200, model_card(served[name]))
                return self.fail(ApiError(404, f"unknown model {name!r}; this server has: {', '.join(served)}",
                                          "model", "model_not_found"))
            self.fail(ApiError(404, f"no such endpoint: GET {path}", code="not_found"))

        def do_POST(self):
            path = self.path.split("?", 1)[0]
            body = self.read_body()
            if body is None:
                return
            if path != "/v1/chat/completions":
                return self.fail(ApiError(404, f"no such endpoint: POST {path}", code="not_found"))
            try:
                try:
                    text = body.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ApiError(400, f"the body is not UTF-8 text (bad byte at position {e.start})") from None
                try:
                    request = json.loads(text, parse_constant=_reject_constant)
                except ValueError as e:
                    raise ApiError(400, f"the body is not valid JSON: {e}") from None
                s, item, stream, include_usage = parse_request(request, served, cfg)
            except ApiError as e:
                return self.fail(e)
            s.queue.put(item)
            item["done"].wait()
            if item["error"] is not None:
                return self.fail(item["error"])
            rid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
            if not stream:
                return self.send_json(200, completion(s, item, rid, created))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            for chunk in chunks(s, item, rid, created, include_usage):
                self.wfile.write(b"data: " + json.dumps(chunk, ensure_ascii=False).encode("utf-8") + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def read_body(self):
            """The request body, or None after answering an error (missing length, too large)."""
            length = self.headers.get("Content-Length")
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
                self.close_connection = True
                self.fail(ApiError(411, "send the body with a Content-Length header", code="length_required"))
                return None
            try:
                length = int(length)
                if length < 0:
                    raise ValueError
            except ValueError:
                self.close_connection = True
                self.fail(ApiError(400, f"bad Content-Length header: {length!r}"))
                return None
            if length > MAX_BODY:
                self.close_connection = True
                left = length
                while 0 < left <= 16 * MAX_BODY:  # read and drop it, so the client can read our answer
                    got = self.rfile.read(min(left, 65536))
                    if not got:
                        break
                    left -= len(got)
                self.fail(ApiError(413, f"the body is {length} bytes; the limit is {MAX_BODY} bytes",
                                   code="request_too_large"))
                return None
            return self.rfile.read(length)

    return Handler


def model_card(s):
    return {"id": s.name, "object": "model", "created": s.created, "owned_by": "minigpt"}


class Server(ThreadingHTTPServer):
    request_queue_size = 128   # the listen backlog: the default 5 resets bursts of concurrent clients
    daemon_threads = True


def make_server(cfg):
    served, rm_folder = load_all(cfg)
    server = Server((cfg.host, cfg.port), make_handler(served, cfg))
    for s in served.values():
        s.thread.start()
    return server, served, rm_folder


def main(cfg):
    try:
        server, served, rm_folder = make_server(cfg)
    except OSError as e:
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
    host, port = server.server_address[:2]
    rm = f"; reward model {rm_folder}" if rm_folder else ""
    print(f"serving {', '.join(f'{n} ({s.folder})' for n, s in served.items())}{rm}", flush=True)
    print(f"http://{host}:{port}/v1  (OpenAI-compatible; GET /health, /v1/models, POST /v1/chat/completions)",
          flush=True)
    print(f"http://{host}:{port}/  (the chat page: every model answers side by side)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    run(main, Config)
