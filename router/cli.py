"""`router`: serve, check a model repository, make an API key, or call a running router (embed, rerank,
chat, models, health: router/grpc/client/commands.py).

Flags only override settings (router/settings.py); nothing is parsed at import time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

DEFAULT_TARGET = "127.0.0.1:50051"


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the router (and, unless --triton is given, a Triton)")
    p.add_argument("--config", type=Path, help="TOML settings file (same keys as MODELROUTER_* variables)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051)")
    p.add_argument("--http-port", type=int, help="also serve the OpenAI-style HTTP API on this port (0: a free one)")
    p.add_argument(
        "--triton",
        action="append",
        metavar="HOST:PORT",
        help="use this existing Triton (gRPC) instead of starting one; repeat for several shards",
    )
    p.add_argument(
        "--embedded-shards",
        type=int,
        metavar="N",
        help="without --triton: start N tritonservers here over the same repository (default 1)",
    )
    p.add_argument("--model-repository", type=Path, help="the Triton model repository (tokenizers are read here)")
    p.add_argument("--workers", type=int, metavar="N", help="router processes serving the port together (default 1)")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the parent of `workers`
    p.add_argument("--log-format", choices=["auto", "console", "json"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _client_parsers(sub: argparse._SubParsersAction) -> None:
    embed = sub.add_parser("embed", help="embed texts through a running router")
    embed.add_argument("texts", nargs="+")
    embed.add_argument("--model", default="all-minilm-l6-v2")
    embed.add_argument("--truncation", choices=["CHUNK", "END", "START", "NONE"])
    rerank = sub.add_parser("rerank", help="rank documents against a query through a running router")
    rerank.add_argument("query")
    rerank.add_argument("documents", nargs="+", metavar="DOC")
    rerank.add_argument("--model", default="minilm-reranker")
    rerank.add_argument("--top-n", type=int, help="return only the best N")
    rerank.add_argument("--truncation", choices=["CHUNK", "END", "START", "NONE"])
    chat = sub.add_parser("chat", help="ask a generation model through a running router; the answer streams")
    chat.add_argument("message")
    chat.add_argument("--model", default="smollm2-135m-instruct")
    chat.add_argument("--max-tokens", type=int, default=128)
    chat.add_argument("--temperature", type=float)
    for name, help_text in (
        ("models", "list the models a running router serves"),
        ("health", "ask gRPC health"),
    ):
        sub.add_parser(name, help=help_text)
    for parser in sub.choices.values():
        if parser.prog.split()[-1] not in ("serve", "check"):
            parser.add_argument("--target", default=DEFAULT_TARGET, help=f"router address (default {DEFAULT_TARGET})")
            parser.add_argument(
                "--api-key", default=os.environ.get("MODELROUTER_API_KEY"), help="sent as `authorization: Bearer`"
            )
            parser.add_argument("--ca-file", type=Path, help="PEM CA that signed the router's certificate (TLS)")
            parser.add_argument("--cert-file", type=Path, help="client certificate (mutual TLS), with --key-file")
            parser.add_argument("--key-file", type=Path)
    check = sub.add_parser("check", help="check a Triton model repository for what the router would refuse")
    check.add_argument("path", type=Path, help="the model repository (a folder of model folders)")
    check.add_argument("--triton", metavar="HOST:PORT", help="also read this Triton and make one call per model")
    check.add_argument("--json", action="store_true", help="print JSON instead of text")
    check.add_argument(
        "--no-weights",
        action="store_true",
        help="do not require the files backends load (model.onnx, model.plan): configs checked before a build",
    )
    keygen = sub.add_parser("keygen", help="make an API key for a principal and print the settings that declare it")
    keygen.add_argument("principal", help="the principal's name (its tenant unless the settings say otherwise)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="router", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _client_parsers(sub)
    return parser


def _settings(args: argparse.Namespace):
    import os

    from router.settings import CONFIG_ENV, Settings

    if args.config:
        os.environ[CONFIG_ENV] = str(args.config)
    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "http_port": args.http_port,
            "triton": args.triton,
            "embedded_shards": args.embedded_shards,
            "workers": args.workers,
            "model_repository": args.model_repository,
            "log_format": args.log_format,
            "log_level": args.log_level,
        }.items()
        if value is not None
    }
    return Settings(**overrides)


async def _serve(settings, worker_index: int | None = None) -> None:
    from router import heap
    from router.app import STOP_GRACE_S, STOP_QUIET_LIMIT_S, STOP_QUIET_S, Router
    from router.grpc.server import RouterServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    if settings.workers > 1 and worker_index is None:
        from router.workers import WorkerPool

        pool = WorkerPool(settings)
        await pool.run(stop, lambda port, http_port: _print_banner(settings, port, None, http_port))
        print("stopped the workers and Triton.", file=sys.stderr, flush=True)
        return
    router = Router(settings)
    server = RouterServer(router, settings)
    http = None
    if settings.http_port is not None:
        from router.http.server import HttpServer

        http = HttpServer(router, settings, reuse_port=worker_index is not None)
    announced = False
    listening = asyncio.Event()

    async def banner() -> None:
        await listening.wait()  # readiness may come before the last listener is bound
        _print_banner(settings, server.port, router, http.port if http else None)

    def announce(ready: bool, models: dict[str, bool]) -> None:
        nonlocal announced
        if ready and not announced:
            announced = True
            heap.freeze()  # start-up is over: what lives now lives as long as the process
            if worker_index is None:  # a worker's parent announces the workers once
                announcing.append(asyncio.create_task(banner()))

    announcing: list[asyncio.Task] = []

    router.on_readiness(announce)
    grace_s = 0.0
    try:
        await router.start()
        await server.start()
        if http is not None:
            await http.start()
        listening.set()
        await stop.wait()
        print(
            f"\ndraining: no new calls; up to {settings.shutdown_grace_s:g} s for those in flight...",
            file=sys.stderr,
            flush=True,
        )
        if await router.shut_down():
            grace_s = STOP_GRACE_S
    finally:
        print("stopping the router and Triton...", file=sys.stderr, flush=True)
        # The work is done, but calls may still be on their way out (an answer being written, a refusal
        # of a call that came in while draining): the server stops taking calls in a lull and lets
        # those end. Stopped with no grace, they were cancelled (CANCELLED at the caller).
        stopping = [
            server.stop(
                grace_s,
                quiet_s=STOP_QUIET_S if grace_s else 0.0,
                quiet_limit_s=STOP_QUIET_LIMIT_S,
                not_before=router.callers_back_by + STOP_QUIET_S,
            )
        ]
        if http is not None:
            stopping.append(http.stop(grace_s))
        await asyncio.gather(*stopping)
        await router.stop()


def _print_banner(settings, port: int | None, router, http_port: int | None = None) -> None:
    """`router`: the one serving; None when `workers` processes serve (the parent knows no models)."""
    target = f"{settings.host}:{port}"
    http = ""
    if http_port is not None:
        scheme = "https" if settings.tls_cert_file else "http"
        base = f"{scheme}://{settings.host}:{http_port}/v1"
        http = f"""
  HTTP API (OpenAI-style embeddings and chat, Cohere-style rerank) at {base}
    curl {base}/embeddings -H 'content-type: application/json' -d '{{"model": "all-minilm-l6-v2", "input": "hello"}}'
    .venv/bin/python -c "from openai import OpenAI; c = OpenAI(base_url='{base}', api_key='unused'); \\
      print(c.chat.completions.create(model='smollm2-135m-instruct', \\
      messages=[{{'role': 'user', 'content': 'What is the capital of France?'}}]).choices[0].message.content)"
"""
    if router is None:
        about = f"{settings.workers} worker processes"
    else:
        triton = ", ".join(router.backend.addresses)
        models = ", ".join(m.contract.name for m in router.registry.models())
        about = f"Triton: {triton}; models: {models}"
    print(
        f"""
model-router is ready on {target}  ({about})

  Try it from another shell:
    .venv/bin/router embed --target {target} "A man is eating food." "A man eats a meal." "Stock markets fell."
    .venv/bin/router rerank --target {target} "Who lives in Berlin?" "Bread recipes." "Berlin has 3.9 million people."
    .venv/bin/router chat --target {target} "What is the capital of France?"
    .venv/bin/router models --target {target}
    .venv/bin/router health --target {target}
  Or with any gRPC client (reflection is on), for example:
    grpcurl -plaintext -d '{{"model": "all-minilm-l6-v2", "inputs": ["hello"]}}' \\
      {target} modelrouter.v1.ModelRouterService/Embed
    grpcurl -plaintext -d '{{"model": "smollm2-135m-instruct", "messages": [{{"role": "user", "content": "Hi!"}}]}}' \\
      {target} modelrouter.v1.ModelRouterService/Generate
{http}
  Ctrl-C stops the router and Triton.
""",
        flush=True,
    )


def _keygen(principal: str) -> int:
    from router.core.auth import hash_key, new_key

    key = new_key()
    print(f"API key for {principal!r} (give it to the caller; the router keeps only its hash):\n  {key}\n")
    print("Settings (the TOML file named by MODELROUTER_CONFIG):")
    print(f'  [principals.{json.dumps(principal)}]\n  key_sha256 = "{hash_key(key)}"')
    print('  # tenant = "...", models = ["..."], act_for_others = false, admin = false')
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keygen":
        return _keygen(args.principal)
    if args.command == "check":
        from router import check
        from router.observability import logs

        if args.triton:  # the router's core logs what it meets; the report alone goes to standard output
            logs.configure("warning", "console", stream=sys.stderr)
        return check.run(args.path, args.triton, args.json, weights=not args.no_weights)
    if args.command != "serve":
        from router.grpc.client import commands

        return commands.run(args)
    from pydantic import ValidationError

    from router import event_loop
    from router.observability import logs

    try:
        settings = _settings(args)
    except ValidationError as error:
        for problem in error.errors():
            name = ".".join(str(part) for part in problem["loc"]) or "settings"
            print(f"router: invalid setting {name}: {problem['msg']}", file=sys.stderr)
        return 2
    fields = {} if args.worker_index is None else {"worker": args.worker_index}
    logs.configure(settings.log_level, settings.log_format, fields=fields)
    event_loop.run(_serve(settings, args.worker_index), settings.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
