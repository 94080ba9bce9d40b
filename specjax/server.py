"""`specjax serve`: an OpenAI-compatible HTTP server over one engine, through continuous batching.

    client -> Starlette (uvicorn) -> Worker.submit(Request) -> the engine thread's Batcher (B rows, S slots)
           <- JSON, or server-sent events of OpenAI's chunk format, as the loop commits tokens

Endpoints: POST /v1/completions, POST /v1/chat/completions (the tokenizer's chat template), both
with "stream": true; GET /v1/models; GET /health (rows active, requests waiting, served, cancelled,
executables compiled ahead of use and still to compile).
Request fields: model, prompt / messages, max_tokens, temperature, top_p, seed, stop (a string or up
to 4), n (1 only), stream, stream_options.include_usage. A response has OpenAI's `usage` and a
`specjax` field: llm_steps, mean_accepted (MAT: tokens per LLM step), finish_reason (the engine's).
Bad input gets status 400 and OpenAI's error JSON {"error": {"message", "type", "param", "code"}}.

One thread runs the engine; the event loop only queues requests and relays tokens. While no request
is active or waiting, the engine thread compiles the row tiers' executables one at a time between
polls (--precompile idle, the default; Batcher.compile_next), so the server listens at once and a
request that arrives meanwhile waits for one compile at most. A client that
disconnects mid-stream cancels its request: its row is freed at the loop's next return to the host.
SIGINT / SIGTERM: uvicorn stops accepting, finishes the open responses, then the engine thread stops.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid

from specjax.batching import Batcher, Request
from specjax.engine import EngineError
from specjax.sampling import SamplingConfig
from specjax.streaming import StopText, TextDelta

COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
STREAM_TARGET_SECONDS = 0.1  # the loop returns to the host (and streams) about this often
FINISH = {"eos": "stop", "max_new_tokens": "length", "length": "length", "cancelled": "stop"}
DEFAULT_SAMPLING = SamplingConfig(temperature=1.0)  # a request that names no temperature (OpenAI's default)


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


class Worker:
    """The engine thread: a Batcher stepped while there is work, requests submitted from any thread;
    while idle, it compiles what the batcher queued (Batcher.precompile_when_idle), one at a time."""

    def __init__(self, gen, rows: int, num_slots: int, steps_per_call: int | None = None, row_tiers: bool = True):
        self.gen = gen
        self.batcher = Batcher(gen.engine, gen.mode == "spec", rows, num_slots, gen.eos_ids(),
                               steps_per_call=steps_per_call, target=STREAM_TARGET_SECONDS, row_tiers=row_tiers)
        self.stats = {"served": 0, "cancelled": 0, "failed": 0}
        self.precompile = {"mode": "off", "compiled": 0, "pending": 0}  # for /health
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="specjax-engine", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.batcher.lock:
            self.batcher.lock.notify_all()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.batcher.step() and not self._compile_next():
                    self.batcher.wait_for_work(0.05)
            except Exception as e:  # a failed step fails the requests in it; the server goes on
                print(f"specjax serve: engine step failed: {e!r}", file=sys.stderr, flush=True)
                self._fail_all(e)

    def _compile_next(self) -> bool:
        """One queued executable compiled while idle (False: none, or work arrived); a line on stderr
        when the last is done. A failed compile stops the idle compiling: the rest compile on first use."""
        b = self.batcher
        if not b.to_compile:
            return False
        try:
            did = b.compile_next()
        except Exception as e:
            b.to_compile.clear()
            print(f"specjax serve: compiling while idle failed ({e!r}); the rest compile on first use",
                  file=sys.stderr, flush=True)
            did = False
        self.precompile.update(compiled=b.idle_compiled, pending=len(b.to_compile))
        if did and not b.to_compile:
            print(f"specjax serve: compiled {b.idle_compiled} executables while idle ({b.idle_compile_seconds:.1f}s "
                  f"of compiling; all done {time.perf_counter() - self._t0:.1f}s after start)", file=sys.stderr,
                  flush=True)
        return did

    def _fail_all(self, e: BaseException) -> None:
        b = self.batcher
        reqs = list(b.active.values())
        b.active.clear()
        with b.lock:
            reqs += list(b.waiting)
            b.waiting.clear()
        b.state = b._empty_state(0)
        for r in reqs:
            self.stats["failed"] += 1
            if r.on_done is not None:
                r.on_done(e)

    def health(self) -> dict:
        b = self.batcher
        return {"status": "ok", "rows": b.rows, "tier": b.tier, "active": len(b.active), "waiting": len(b.waiting),
                "cache_slots": b.num_slots, **self.stats, "precompile": dict(self.precompile)}


# ----------------------------------------------------------------------------- request parsing


def _error(e: BadRequest):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": str(e), "type": "invalid_request_error", "param": e.param,
                                   "code": e.code}}, status_code=e.status)


def _number(body: dict, name: str, default, low=None, high=None, integer=False):
    v = body.get(name, default)
    if v is None:
        return default
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok:
        raise BadRequest(f"'{name}' must be {'an integer' if integer else 'a number'}, got {v!r}", name)
    if (low is not None and v < low) or (high is not None and v > high):
        raise BadRequest(f"'{name}' must be in [{low}, {high}], got {v!r}", name)
    return v


class Api:
    """Parses requests into engine Requests and relays their output (see the module docstring)."""

    def __init__(self, gen, worker: Worker, model_name: str):
        self.gen, self.worker, self.model_name = gen, worker, model_name
        self.created = int(time.time())

    def prompt_ids(self, body: dict, chat: bool) -> list[int]:
        tok = self.gen.llm.tokenizer
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise BadRequest("'messages' must be a non-empty list of {role, content}", "messages")
            for m in msgs:
                if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise BadRequest("each message must be an object with string 'role' and 'content'", "messages")
            if tok is None or not tok.has_chat_template:
                raise BadRequest("this model has no chat template: use /v1/completions", "messages")
            text = tok.hf.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in msgs],
                                              tokenize=False, add_generation_prompt=True)
            ids = list(tok.hf(text, add_special_tokens=False)["input_ids"])
        else:
            p = body.get("prompt")
            if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
                p = p[0]
            if isinstance(p, str):
                if not p:
                    raise BadRequest("'prompt' is empty: give at least one token of text", "prompt")
                if tok is None:
                    raise BadRequest("this model has no tokenizer: give 'prompt' as a list of token ids", "prompt")
                ids = tok.encode(p)
            elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                ids = list(p)
            else:
                raise BadRequest("'prompt' must be a string or a list of token ids (one prompt: n = 1)", "prompt")
        if not ids:
            raise BadRequest("the prompt is empty (no tokens)", "messages" if chat else "prompt")
        V = self.gen.llm.cfg.vocab_size
        bad = [t for t in ids if not 0 <= t < V]
        if bad:
            raise BadRequest(f"token ids outside the vocabulary [0, {V}): {bad[:5]}", "prompt")
        return ids

    def parse(self, body, chat: bool):
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise BadRequest(f"unknown model {model!r}: this server serves {self.model_name!r} (see /v1/models)",
                             "model", "model_not_found")
        if _number(body, "n", 1, integer=True) != 1:
            raise BadRequest("only n = 1 is supported (one choice per request)", "n")
        ids = self.prompt_ids(body, chat)
        b = self.worker.batcher
        room = b.num_slots - (len(ids) - 1) - b.room  # new tokens that fit after this prompt
        if room < 1:
            raise BadRequest(f"a prompt of {len(ids)} tokens does not fit the server's cache of {b.num_slots} "
                             f"slots per request (one step needs {b.room}): shorten it or restart with a larger "
                             "--max-len", "messages" if chat else "prompt", "context_length_exceeded")
        default = room if chat else min(COMPLETION_DEFAULT_TOKENS, room)
        name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _number(body, name, default, low=1, integer=True)
        if max_tokens > room:
            raise BadRequest(f"'{name}'={max_tokens} with a prompt of {len(ids)} tokens needs "
                             f"{len(ids) - 1 + max_tokens + b.room} cache slots, more than the {b.num_slots} the "
                             f"server holds per request: at most {room} here (or restart with a larger --max-len)",
                             name, "context_length_exceeded")
        temperature = float(_number(body, "temperature", 1.0, 0.0, 2.0))  # OpenAI's default: 1
        top_p = float(_number(body, "top_p", 1.0, 0.0, 1.0))
        if top_p <= 0.0:
            raise BadRequest(f"'top_p' must be in (0, 1], got {top_p}", "top_p")
        seed = _number(body, "seed", None, low=0, high=2 ** 64 - 1, integer=True)
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else (stop or [])
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
            raise BadRequest("'stop' must be a string or a list of at most 4 strings", "stop")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest(f"'stream' must be true or false, got {stream!r}", "stream")
        opts = body.get("stream_options") or {}
        usage_in_stream = bool(isinstance(opts, dict) and opts.get("include_usage"))
        sampling = SamplingConfig(temperature=temperature, top_p=top_p if temperature > 0 else 1.0)
        return dict(ids=ids, max_tokens=max_tokens, sampling=sampling, seed=seed, stop=stop, stream=stream,
                    usage_in_stream=usage_in_stream)

    # -- running one request ---------------------------------------------------------------------
    def start(self, p: dict):
        """Submits the request; returns (request, async iterator of ('text', str) then ('done', result))."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        put = lambda item: loop.call_soon_threadsafe(q.put_nowait, item)
        req = Request(prompt=p["ids"], max_new_tokens=p["max_tokens"], sampling=p["sampling"], seed=p["seed"],
                      on_tokens=lambda ids: put(("tokens", ids)), on_done=lambda r: put(("done", r)))
        self.worker.batcher.add(req)
        tok = self.gen.llm.tokenizer
        delta = TextDelta(tok) if tok is not None else None
        stops = StopText(p["stop"])

        async def events():
            while True:
                kind, x = await q.get()
                if isinstance(x, BaseException):
                    raise x
                if kind == "tokens":
                    piece = delta.feed(x) if delta is not None else " ".join(map(str, x))
                    text, hit = stops.feed(piece)
                    if hit and not req.cancelled:
                        req.stopped_by_string = True
                        req.cancel()  # the row is freed at the loop's next return
                    if text:
                        yield "text", text
                else:
                    if not stops.stopped:
                        text, _ = stops.feed(delta.flush() if delta is not None else "")
                        text += stops.flush()
                        if text:
                            yield "text", text
                    yield "done", x
                    return

        return req, events()

    def finish_reason(self, req, result) -> str:
        if getattr(req, "stopped_by_string", False):
            return "stop"
        return FINISH.get(result.finish_reason, "stop")

    def usage(self, p, result) -> dict:
        n = len(result.token_ids)
        return {"prompt_tokens": len(p["ids"]), "completion_tokens": n, "total_tokens": len(p["ids"]) + n}

    @staticmethod
    def extra(result) -> dict:
        return {"llm_steps": result.llm_steps, "mean_accepted": result.mean_accepted,
                "finish_reason": result.finish_reason, "drafter_tokens": result.drafter_tokens}

    def record(self, req, result) -> None:
        key = "cancelled" if req.cancelled and not getattr(req, "stopped_by_string", False) else "served"
        self.worker.stats[key] += 1


def build_app(gen, worker: Worker, model_name: str):
    """The Starlette app (worker started and stopped with the app's lifespan)."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.requests import Request as HttpRequest
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    api = Api(gen, worker, model_name)

    async def read_json(request: HttpRequest):
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not valid JSON: {e}", code="invalid_json")

    def handler(chat: bool):
        kind = "chat.completion" if chat else "text_completion"

        async def endpoint(request: HttpRequest):
            try:
                p = api.parse(await read_json(request), chat)
                req, events = api.start(p)
            except (BadRequest, EngineError) as e:
                return _error(e if isinstance(e, BadRequest) else BadRequest(str(e)))
            rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
            created = int(time.time())
            base = {"id": rid, "created": created, "model": model_name}

            if not p["stream"]:
                parts, result = [], None
                try:
                    async for what, x in events:
                        if what == "text":
                            parts.append(x)
                        else:
                            result = x
                except asyncio.CancelledError:
                    req.cancel()
                    raise
                except Exception as e:
                    return JSONResponse({"error": {"message": f"generation failed: {e}", "type": "server_error",
                                                   "param": None, "code": None}}, status_code=500)
                api.record(req, result)
                text = "".join(parts)
                reason = api.finish_reason(req, result)
                choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                           "finish_reason": reason} if chat else
                          {"index": 0, "text": text, "logprobs": None, "finish_reason": reason})
                return JSONResponse({**base, "object": kind, "choices": [choice], "usage": api.usage(p, result),
                                     "specjax": api.extra(result)})

            chunk_kind = "chat.completion.chunk" if chat else "text_completion"

            def sse(choice: dict, **more) -> str:
                return "data: " + json.dumps({**base, "object": chunk_kind, "choices": [choice], **more}) + "\n\n"

            async def body():
                finished = False
                try:
                    if chat:
                        yield sse({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                   "finish_reason": None})
                    async for what, x in events:
                        if what == "text":
                            yield sse({"index": 0, "delta": {"content": x}, "logprobs": None, "finish_reason": None}
                                      if chat else {"index": 0, "text": x, "logprobs": None, "finish_reason": None})
                            continue
                        finished = True
                        api.record(req, x)
                        reason = api.finish_reason(req, x)
                        more = {"specjax": api.extra(x)}
                        if p["usage_in_stream"]:
                            more["usage"] = api.usage(p, x)
                        yield sse({"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason} if chat else
                                  {"index": 0, "text": "", "logprobs": None, "finish_reason": reason}, **more)
                    yield "data: [DONE]\n\n"
                finally:
                    if not finished:  # the client went away (or the engine failed): free the row
                        req.cancel()
                        worker.stats["cancelled"] += 1

            return StreamingResponse(body(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})

        return endpoint

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "created": api.created,
                                                         "owned_by": "specjax"}]})

    async def health(request):
        return JSONResponse(worker.health())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker.start()
        try:
            yield
        finally:
            worker.stop()
            print("specjax serve: engine stopped", file=sys.stderr, flush=True)

    routes = [Route("/v1/completions", handler(False), methods=["POST"]),
              Route("/v1/chat/completions", handler(True), methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]), Route("/health", health, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan)


def serve(gen, host: str, port: int, rows: int, num_slots: int, model_name: str,
          steps_per_call: int | None = None, log_level: str = "info", row_tiers: bool = True,
          precompile: str = "idle") -> None:
    """Runs the server until SIGINT / SIGTERM (uvicorn's handlers: open responses finish first).
    precompile: when every row tier's executables (Batcher.compile_plan) compile, for greedy requests
    and those that name no temperature (DEFAULT_SAMPLING; another sampling config compiles on first
    use): "idle" listens at once and compiles them one at a time on the engine thread while no request
    is active or waiting (a request arriving meanwhile waits for one compile at most); "startup" all
    before listening (Batcher.precompile: no stream then waits for a compile when the batch first
    grows to a tier); "off" each on first use."""
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            """uvicorn's graceful stop on SIGINT / SIGTERM, without re-raising the signal afterwards:
            a clean shutdown exits with status 0."""
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    worker = Worker(gen, rows, num_slots, steps_per_call, row_tiers)
    app = build_app(gen, worker, model_name)
    tiers = "row tiers " + ",".join(map(str, worker.batcher.tiers)) if row_tiers else "no row tiers"
    if precompile not in ("idle", "startup", "off"):
        raise ValueError(f"precompile must be idle, startup or off, got {precompile!r}")
    worker.precompile["mode"] = precompile
    if precompile == "startup":
        print(f"specjax serve: compiling {tiers} for greedy and temperature-1 requests ...", file=sys.stderr,
              flush=True)
        n = len(worker.batcher.compile_plan([DEFAULT_SAMPLING]))
        seconds = worker.batcher.precompile([DEFAULT_SAMPLING])
        worker.precompile["compiled"] = n
        print(f"specjax serve: compiled {n} executables in {seconds:.1f}s", file=sys.stderr, flush=True)
    elif precompile == "idle":
        n = worker.batcher.precompile_when_idle([DEFAULT_SAMPLING])
        worker.precompile["pending"] = n
        print(f"specjax serve: {n} executables of {tiers} (greedy and temperature-1 requests) to compile while "
              "idle", file=sys.stderr, flush=True)
    print(f"specjax serve: {model_name} on http://{host}:{port} ({rows} rows x {num_slots} cache slots, {tiers}, "
          f"mode {gen.mode})", file=sys.stderr, flush=True)
    Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30)).run()
