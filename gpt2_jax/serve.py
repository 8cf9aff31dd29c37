"""Serve a trained run over an OpenAI-compatible HTTP API:

    python -m gpt2_jax.serve --workdir DIR [--step N] [--host 127.0.0.1 --port 8000]
        [--max_batch 32] [--chunk_steps 16] [--max_n 8] [--model NAME]

`POST /v1/completions` (streaming with "stream": true), `GET /v1/models`, `GET /health`; see
gpt2_jax/inference/server.py. SIGTERM (or Ctrl-C) stops accepting connections, finishes the
requests in flight, then exits 0. Needs the `serve` extra: pip install 'gpt2_jax[serve]'.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from gpt2_jax.training.checkpoint import load_trained
from gpt2_jax.errors import UserError, exits_on_user_error


@exits_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gpt2_jax.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the training run's directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_batch", type=int, default=32,
                        help="engine slots: sequences decoded together")
    parser.add_argument("--chunk_steps", type=int, default=16,
                        help="decode steps per compiled call (requests join between calls)")
    parser.add_argument("--max_n", type=int, default=8, help="the most choices per prompt (n)")
    parser.add_argument("--model", default=None, help="the served model's name "
                                                      "(default: the workdir's name)")
    args = parser.parse_args(argv)
    if args.max_batch < 1 or args.chunk_steps < 1 or args.max_n < 1:
        raise UserError("--max_batch, --chunk_steps and --max_n must be at least 1")
    try:
        import uvicorn

        from gpt2_jax.inference.server import EngineThread, create_app
    except ImportError as e:
        raise UserError(f"serving needs the serve extra ({e}): pip install 'gpt2_jax[serve]'")
    from gpt2_jax.inference import Engine

    trained = load_trained(args.workdir, args.step)
    engine = Engine(trained.model.config, trained.params, max_batch=args.max_batch,
                    chunk_steps=args.chunk_steps)
    name = args.model or Path(args.workdir).resolve().name
    app = create_app(EngineThread(engine), name, args.max_n)
    print(f"serving {name} (step {trained.step}, {args.max_batch} slots, {engine.dtype} on "
          f"{engine.device.device_kind}) at http://{args.host}:{args.port}/v1", flush=True)
    # uvicorn drains on SIGTERM/SIGINT, then raises the signal again under the handlers it found:
    # these make that a no-op, so a drained server exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    print("drained; stopped", flush=True)


if __name__ == "__main__":
    main()
