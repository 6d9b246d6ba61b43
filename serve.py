"""Serve the stage folders over an OpenAI-compatible HTTP API (部署 / deployment: for programs, not people).

    python serve.py                                       # every language-model stage folder under out/
    python serve.py --models=sft:out/sft,ppo:out/ppo      # name:folder pairs (a bare folder is named after
                                                          # itself)
    python serve.py --rm=out/rm --port=8000               # reward model scoring every answer (default:
                                                          # <out_dir>/rm if there; --rm= for none)
    python serve.py --label_file=out/human_labels.jsonl   # and the page's ranking tab: people rank answers

    curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "ppo", "messages": [{"role": "user", "content": "Add 3 and 4."}], "seed": 1}'

Built on the standard library's http.server.ThreadingHTTPServer: no new runtime dependency, so it installs
with the README's first command (pip install -r requirements-dev.txt).

Endpoints: GET / (the chat page, minigpt/serve_page.html: open http://127.0.0.1:8000/ in a browser to see
every stage answer the same prompt side by side, token by token, with each token's probability and the
reward), GET /health ({"status": "ok", "generate_calls": N, "decode_steps": N, "cancelled": N,
"models": [...]}), GET /v1/models, GET /v1/models/<name>, POST /v1/chat/completions. Anything else is a 404
in OpenAI's error shape.

The ranking tab (http://127.0.0.1:8000/#rank, with --label_file): a person ranks one prompt's --rank_k answers
from the served models, ties allowed, and each ranking is appended to --label_file in label.py's format, which
train_rm.py and train_dpo.py read with --data (minigpt/human_labels.py). GET /rank/history (the file's count
and last rankings), POST /rank/sample ({"prompt"} -> {"id", "prompt", "answers"}; an empty prompt draws one of
the built-in world's labelling prompts), POST /rank/submit ({"id", "ranking": [[answer, ...], ...] best
first, a group tied, "labeler"}), POST /rank/undo ({"labeler"}: the file's last ranking, if theirs).

What a request means: the whole conversation is the prompt. System (and "developer") messages go into one
"### System:" block at the top, then every earlier user turn with the assistant's answer after it, then the
last message, which must be a user message (minigpt/data.py: encode_conversation, the chat template); "tool"
and "function" messages are refused. When the conversation does not fit the context (with max_tokens, or at
least one answer token), its oldest turns are dropped, never the system message or the last user message,
and the answer says how many ("dropped_turns" below). Every stage trained on the world's conversations
too (a follow-up after one earlier turn; a system message that sets the format: minigpt/dialogues.py), and
the reward model is told the whole conversation.

Supported fields: model, messages, max_tokens (or max_completion_tokens), temperature (0 = greedy), top_p,
seed, n (<= --max_n), logprobs, top_logprobs (<= 20), stream, stream_options.include_usage. `stop`, `tools`
and `functions` are refused rather than silently ignored; other unknown fields are ignored.
Logprobs are the model's own log-probabilities (temperature 1, no top_p), as OpenAI reports them, read from
the logits each token was sampled from; the end-of-text token is not listed and not counted in
usage.completion_tokens (usage.prompt_tokens counts the rendered prompt once, whatever n is).

Our own field, not OpenAI's: each choice carries "minigpt": {"reward": r} with the reward model's score of
the answer when --rm is loaded, and "dropped_turns": N when the N oldest turns were dropped to fit the
context (also on the last streamed chunk of each choice; the server's log says so in one line too).

The request's checks and the answer's JSON: minigpt/chat_api.py. Batching (minigpt/serving.py): one worker
thread per model answers its queued requests in batches,
one generate call per batch, each token streamed to its request as it is sampled.
Nothing in a request names a file: models are chosen only from the names loaded at start.
"""

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from minigpt.checkpoint import check_same_tokenizer, load_model
from minigpt.cli import UserError, check, named_folders, run
from minigpt.chat_api import chunks, completion, parse_request, reject_constant
from minigpt.human_labels import RankingTab, check_labeler
from minigpt.serving import STATS, ApiError, Served
from minigpt.training import check_dtype, pick_device, resolve_dtype
from minigpt.world import World

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "minigpt", "serve_page.html")  # GET /
MAX_BODY = 1 << 20          # bytes of request body we accept


@dataclass
class Config:
    out_dir: str = field(default="out", metadata={
        "help": "serve every stage folder under this one holding a language model"})
    models: list = field(default_factory=list, metadata={
        "help": "name:folder pairs instead of scanning --out_dir"})
    rm: str = field(default="out/rm", metadata={
        "help": "reward model folder scoring every answer ('' = none; by default <out_dir>/rm when present)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    max_batch: int = field(default=32, metadata={"help": "most rows (answers) in one generate call"})
    batch_wait_ms: float = field(default=5.0, metadata={
        "help": "how long a worker waits for more requests to batch"})
    max_n: int = field(default=8, metadata={"help": "most choices (n) per request"})
    default_max_tokens: int = field(default=64, metadata={"help": "max_tokens when a request gives none"})
    label_file: str = field(default="", metadata={
        "help": "the ranking tab's label file (JSON lines in label.py's format; '' = no ranking tab)"})
    labeler: str = field(default="human", metadata={
        "help": "the name a ranking is stored under when the page gives none"})
    rank_k: int = field(default=4, metadata={"help": "answers shown per prompt in the ranking tab"})
    world_seed: int = field(default=0, metadata={
        "help": "seed of the built-in world whose labelling prompts the ranking tab offers"})
    device: str = field(default="cpu", metadata={"help": "auto, cpu, cuda or mps"})
    dtype: str = field(default="auto", metadata={
        "help": "auto (bf16 autocast where this device's bf16 matmul is clearly faster), float32 or "
                "bfloat16"})

    def validate(self):
        check_dtype(self.dtype)
        check(0 < self.port < 65536, f"--port must be in 1..65535, got {self.port}")
        check(self.max_batch >= 1, f"--max_batch must be >= 1, got {self.max_batch}")
        check(self.batch_wait_ms >= 0, f"--batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        check(self.max_n >= 1, f"--max_n must be >= 1, got {self.max_n}")
        check(self.default_max_tokens >= 1,
              f"--default_max_tokens must be >= 1, got {self.default_max_tokens}")
        check(self.rank_k >= 2, f"--rank_k must be >= 2 (answers to rank), got {self.rank_k}")
        try:
            check_labeler(self.labeler)
        except ValueError as e:
            raise UserError(f"--labeler: {e}") from None


# ---- models -----------------------------------------------------------------------------------------------

# The pipeline's models in its order (its report's names: the pretrain stage's model is "pretrained").
PIPELINE_MODELS = ["pretrained", "sft", "ppo", "ppo_ptx", "dpo", "preferred_ft", "grpo"]
MODEL_NAMES = {"pretrain": "pretrained"}   # stage folder -> model name, where they differ


def find_stage_folders(out_dir):
    """name -> folder for every immediate subfolder of out_dir holding a model.pt (load_all keeps the language
    models among them), the pipeline's models first in pipeline order, then the others alphabetically."""
    if not os.path.isdir(out_dir):
        raise UserError(f"{out_dir}: no such folder (run python pipeline.py first, or pass "
                        "--models=name:folder)")
    found = {MODEL_NAMES.get(name, name): os.path.join(out_dir, name) for name in os.listdir(out_dir)
             if os.path.isfile(os.path.join(out_dir, name, "model.pt"))}
    rank = {name: i for i, name in enumerate(PIPELINE_MODELS)}
    return {name: found[name] for name in sorted(found, key=lambda n: (rank.get(n, len(rank)), n))}


def load_all(cfg):
    device = pick_device(cfg.device)
    folders = dict(named_folders(cfg.models)) if cfg.models else find_stage_folders(cfg.out_dir)
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
        served[name] = Served(name, folder, model.eval(), tokenizer, rm, cfg.max_batch, cfg.batch_wait_ms,
                              resolve_dtype(cfg.dtype, device))
    if not served:
        raise UserError(f"{cfg.out_dir}: no stage folder holds a language model (model.pt of kind 'lm'); "
                        f"run python pipeline.py first, or pass --models=name:folder")
    return served, rm_folder


# ---- HTTP -------------------------------------------------------------------------------------------------

RANK_OFF = "the ranking tab is off: start serve.py with --label_file=PATH"


def make_handler(served, cfg, rank=None):
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
                return self.send_json(200, {"status": "ok", **STATS, "models": list(served)})
            if path == "/v1/models":
                return self.send_json(200, {"object": "list",
                                            "data": [model_card(s) for s in served.values()]})
            if path == "/rank/history":
                if not rank:
                    return self.fail(ApiError(404, RANK_OFF))
                try:
                    return self.send_json(200, rank.history())
                except UserError as e:                     # the label file is not whole
                    return self.fail(ApiError(409, str(e), code="label_file_not_whole"))
            if path.startswith("/v1/models/"):
                name = path[len("/v1/models/"):]
                if name in served:
                    return self.send_json(200, model_card(served[name]))
                return self.fail(ApiError(404, f"unknown model {name!r}; this server has: "
                                               f"{', '.join(served)}", "model", "model_not_found"))
            self.fail(ApiError(404, f"no such endpoint: GET {path}", code="not_found"))

        def do_POST(self):
            path = self.path.split("?", 1)[0]
            body = self.read_body()
            if body is None:
                return
            rank_action = {"/rank/sample": "sample", "/rank/submit": "submit", "/rank/undo": "undo"}.get(path)
            if path != "/v1/chat/completions" and not rank_action:
                return self.fail(ApiError(404, f"no such endpoint: POST {path}", code="not_found"))
            try:
                request = parse_json(body)
                if rank_action:
                    if not rank:
                        raise ApiError(404, RANK_OFF)
                    if not isinstance(request, dict):
                        raise ApiError(400, "the body must be a JSON object")
                    return self.send_json(200, getattr(rank, rank_action)(request))
                s, req, stream, include_usage = parse_request(request, served, cfg)
            except UserError as e:                         # the label file is not whole: refused, one line
                return self.fail(ApiError(409, str(e), code="label_file_not_whole"))
            except OSError as e:                           # the label file cannot be written: unchanged
                return self.fail(ApiError(500, f"{cfg.label_file}: cannot write: {e.strerror or e}",
                                          type="server_error"))
            except ApiError as e:
                return self.fail(e)
            if req.dropped_turns:
                print(f"{s.name}: dropped the {req.dropped_turns} oldest turn(s) of a conversation to fit "
                      f"the context of {s.block_size} tokens", file=sys.stderr, flush=True)
            s.queue.put(req)
            rid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
            if not stream:
                while True:
                    news = req.events.get()
                    if news[0] == "error":
                        return self.fail(news[1])
                    if news[0] == "done":
                        return self.send_json(200, completion(s, req, rid, created))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            try:
                try:
                    for chunk in chunks(s, req, rid, created, include_usage):
                        self.send_event(chunk)
                except ApiError as e:                      # headers are sent: the error goes in the stream
                    self.send_event(e.body())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                req.cancelled = True                       # the client went away: free its rows in the batch
                self.close_connection = True

        def send_event(self, obj):
            self.wfile.write(b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n")
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


def parse_json(body):
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the body is not UTF-8 text (bad byte at position {e.start})") from None
    try:
        return json.loads(text, parse_constant=reject_constant)
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None


def model_card(s):
    return {"id": s.name, "object": "model", "created": s.created, "owned_by": "minigpt"}


class Server(ThreadingHTTPServer):
    request_queue_size = 128   # the listen backlog: the default 5 resets bursts of concurrent clients
    daemon_threads = True


def make_server(cfg):
    served, rm_folder = load_all(cfg)
    rank = RankingTab(served, cfg, World(cfg.world_seed)) if cfg.label_file else None
    server = Server((cfg.host, cfg.port), make_handler(served, cfg, rank))
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
    rm += f"; dtype {next(iter(served.values())).dtype}" if served else ""
    print(f"serving {', '.join(f'{n} ({s.folder})' for n, s in served.items())}{rm}", flush=True)
    print(f"http://{host}:{port}/v1  (OpenAI-compatible; GET /health, /v1/models, POST /v1/chat/completions)",
          flush=True)
    print(f"http://{host}:{port}/  (the chat page: every model answers side by side)", flush=True)
    if cfg.label_file:
        print(f"http://{host}:{port}/#rank  (the ranking tab: rankings go to {cfg.label_file})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    run(main, Config)
