"""An OpenAI-compatible HTTP API over the engine (FastAPI; `python -m gpt2_jax.serve` runs it).

`POST /v1/completions` (prompt: a string, a list of strings or a list of token ids; max_tokens,
temperature, top_p, top_k (an extension, as vLLM's), n, stop, seed, stream as server-sent events
ending in `data: [DONE]`), `GET /v1/models`, `GET /health`. One thread owns the engine; every
HTTP request's sequences join its slots, so requests from many clients decode as one batch.
Bad input is a 400 (404 for an unknown model) with OpenAI's error body, `param` naming the
field. A streaming client that disconnects has its sequences cancelled, freeing their slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import secrets
import sys
import threading
import time
import traceback
from typing import Annotated, Union

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from gpt2_jax import tokenizer
from gpt2_jax.errors import RequestError
from gpt2_jax.inference.engine import Engine, Request, SamplingParams

StrictFloat = Annotated[float, Field(strict=True)]  # a number, never a string


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    prompt: Union[StrictStr, list[StrictStr], list[StrictInt]] = "<|endoftext|>"
    max_tokens: Annotated[StrictInt, Field(ge=1)] = 16
    temperature: Annotated[StrictFloat, Field(ge=0)] = 1.0
    top_p: Annotated[StrictFloat, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[StrictInt, Field(ge=-1)] = 0  # 0 or -1: no limit
    n: Annotated[StrictInt, Field(ge=1)] = 1
    stop: Union[StrictStr, Annotated[list[StrictStr], Field(max_length=4)], None] = None
    seed: Annotated[StrictInt, Field(ge=0, lt=2**32)] | None = None
    stream: StrictBool = False


def _error(status: int, message: str, param: str | None, code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {
        "message": message, "type": "invalid_request_error", "param": param, "code": code}})


class EngineThread:
    """The engine's one owner: a thread that admits submitted requests between chunks and runs
    the engine while anything is in flight. `close` lets it finish what it holds, then stops."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.inbox: queue.Queue[Request] = queue.Queue()
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.thread.start()

    def submit(self, request: Request) -> None:
        request.params.check(len(request.prompt), self.engine.cfg.block_size)
        self.inbox.put(request)

    def close(self) -> None:
        self.closing.set()
        self.thread.join()

    def _run(self) -> None:
        engine = self.engine
        while True:
            while not self.inbox.empty():
                engine.add(self.inbox.get())
            if engine.busy:
                try:
                    engine.step()
                except Exception:  # noqa: BLE001 - report, fail what was in flight, serve on
                    traceback.print_exc(file=sys.stderr)
                    engine.abort()
                continue
            if self.closing.is_set():
                return
            with contextlib.suppress(queue.Empty):
                engine.add(self.inbox.get(timeout=0.05))


def _prompts(body: CompletionRequest) -> list[list[int]]:
    """Token ids of each prompt ("" is <|endoftext|>, as GPT-2 begins every document)."""
    if isinstance(body.prompt, str) or (body.prompt and isinstance(body.prompt[0], str)):
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        return [tokenizer.encode(text) or [tokenizer.EOT_TOKEN] for text in texts]
    if not body.prompt:
        raise RequestError("prompt", "must not be empty")
    if not all(0 <= t < tokenizer.VOCAB_SIZE for t in body.prompt):
        raise RequestError("prompt", f"token ids must be in [0, {tokenizer.VOCAB_SIZE})")
    return [list(body.prompt)]


def create_app(owner: EngineThread, model_name: str, max_n: int) -> FastAPI:
    """The API over an engine already running on `owner`; stopping the app closes it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        owner.close()  # uvicorn has drained the requests in flight

    app = FastAPI(title="gpt2_jax", lifespan=lifespan)
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def invalid(request: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error')}",
                          None)
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = loc[0] if loc else None
        where = ".".join(loc) or "body"
        return _error(400, f"{where}: {first.get('msg', 'invalid')}", param)

    @app.get("/health")
    async def health() -> dict:
        """Liveness, and the engine's load (read from another thread: a snapshot)."""
        engine = owner.engine
        return {"status": "ok", "slots": engine.max_batch,
                "busy": sum(r is not None for r in engine.slots),
                "waiting": len(engine.pending) + owner.inbox.qsize(),
                "finished": dict(engine.finished)}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [
            {"id": model_name, "object": "model", "created": created, "owned_by": "gpt2_jax"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        if body.model not in (None, model_name):
            return _error(404, f"the model {body.model!r} does not exist (this server serves "
                               f"{model_name!r})", "model", "model_not_found")
        if body.n > max_n:
            return _error(400, f"n: at most {max_n} choices per prompt, not {body.n}", "n")
        try:
            prompts = _prompts(body)
        except RequestError as e:
            return _error(400, str(e), e.param)
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()
        seed = secrets.randbits(32) if body.seed is None else body.seed
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        requests = []
        for index in range(len(prompts) * body.n):
            params = SamplingParams(body.max_tokens, body.temperature, max(body.top_k, 0),
                                    body.top_p, (seed + index) % 2**32, stop)
            requests.append(Request(prompts[index // body.n], params, on_update=(
                lambda r, text, i=index: loop.call_soon_threadsafe(
                    updates.put_nowait, (i, text, r.finish_reason)))))
        try:
            for request in requests:
                request.params.check(len(request.prompt), owner.engine.cfg.block_size)
        except RequestError as e:
            return _error(400, str(e), e.param)
        for request in requests:
            owner.submit(request)
        head = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion",
                "created": int(time.time()), "model": model_name}

        async def each_update():
            """(index, new text, finish_reason) until every choice has finished."""
            unfinished = len(requests)
            while unfinished:
                index, text, finish_reason = await updates.get()
                unfinished -= finish_reason is not None
                yield index, text, finish_reason

        if body.stream:
            async def events():
                try:
                    async for index, text, finish_reason in each_update():
                        choice = {"text": text, "index": index, "logprobs": None,
                                  "finish_reason": finish_reason}
                        yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
                    yield "data: [DONE]\n\n"
                finally:  # a client gone mid-stream: its sequences leave their slots
                    for request in requests:
                        request.cancel()

            return StreamingResponse(events(), media_type="text/event-stream")
        async for _ in each_update():
            pass
        completion_tokens = sum(len(r.tokens) for r in requests)
        prompt_tokens = sum(map(len, prompts))
        return {**head, "choices": [
            {"text": r.text, "index": i, "logprobs": None, "finish_reason": r.finish_reason}
            for i, r in enumerate(requests)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}

    return app
