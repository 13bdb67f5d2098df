"""The CLI's client commands (`router embed`, `rerank`, `chat`, `models`, `health`): one call each to a
running router, through the generated stubs and the service config callers are given."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

SERVICE_CONFIG = Path(__file__).resolve().parents[3] / "protos" / "modelrouter" / "v1" / "service_config.json"
EXCERPT = 160  # characters of a document's best window shown by `rerank`


class BearerKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <key>` to every call."""

    def __init__(self, key: str) -> None:
        self.entry = ("authorization", f"Bearer {key}")

    def _with_key(self, details):
        return details._replace(metadata=[*(details.metadata or ()), self.entry])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_key(details), request)


def channel_for(args: argparse.Namespace) -> grpc.Channel:
    """A channel to `--target` (TLS with `--ca-file`, mutual with `--cert-file`), with gRPC's own retries
    paced by the router's pushback, and the API key if one is given."""
    options = [("grpc.service_config", SERVICE_CONFIG.read_text())]
    if args.ca_file is None:
        channel = grpc.insecure_channel(args.target, options=options)
    else:
        credentials = grpc.ssl_channel_credentials(
            args.ca_file.read_bytes(),
            args.key_file.read_bytes() if args.key_file else None,
            args.cert_file.read_bytes() if args.cert_file else None,
        )
        channel = grpc.secure_channel(args.target, credentials, options=options)
    return grpc.intercept_channel(channel, BearerKey(args.api_key)) if args.api_key else channel


def _health(channel: grpc.Channel, args: argparse.Namespace) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _models(channel: grpc.Channel, args: argparse.Namespace) -> None:
    reply = pb_grpc.ModelRouterServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    print(json.dumps(MessageToDict(reply), indent=2))


def _chat(channel: grpc.Channel, args: argparse.Namespace) -> None:
    request = pb.GenerateRequest(
        model=args.model,
        messages=[pb.ChatMessage(role="user", content=args.message)],
        max_tokens=args.max_tokens,
        **({"temperature": args.temperature} if args.temperature is not None else {}),
    )
    for reply in pb_grpc.ModelRouterServiceStub(channel).Generate(request, timeout=300):
        print(reply.text, end="", flush=True)
    usage = str(reply.usage).strip().replace("\n", ", ")
    print(f"\n[{pb.FinishReason.Name(reply.finish_reason)}] {usage}")


def _embed(channel: grpc.Channel, args: argparse.Namespace) -> None:
    truncation = getattr(pb, f"TRUNCATION_{args.truncation}") if args.truncation else 0
    request = pb.EmbedRequest(model=args.model, inputs=args.texts, truncation=truncation)
    reply = pb_grpc.ModelRouterServiceStub(channel).Embed(request, timeout=60)
    vectors = np.array([e.values for e in reply.embeddings])
    for text, vector in zip(args.texts, vectors, strict=True):
        print(f"{len(vector)} dims  [{', '.join(f'{v:+.4f}' for v in vector[:4])}, ...]  {text[:60]!r}")
    if len(vectors) > 1:
        print("cosine similarities:")
        print(np.array2string(vectors @ vectors.T, precision=3))
    print(f"usage: {reply.usage}".replace("\n", " "))


def _rerank(channel: grpc.Channel, args: argparse.Namespace) -> None:
    truncation = getattr(pb, f"TRUNCATION_{args.truncation}") if args.truncation else 0
    request = pb.RerankRequest(model=args.model, query=args.query, documents=args.documents, truncation=truncation)
    if args.top_n is not None:
        request.top_n = args.top_n
    reply = pb_grpc.ModelRouterServiceStub(channel).Rerank(request, timeout=120)
    score_type = pb_grpc.ModelRouterServiceStub(channel).GetModel(pb.GetModelRequest(name=args.model), timeout=10)
    print(
        f"{len(reply.results)} of {len(args.documents)} documents, best first "
        f"(scores: {pb.ScoreType.Name(score_type.model.score_type)}):"
    )
    for rank, result in enumerate(reply.results, 1):
        document = args.documents[result.index]
        start, end = result.best_window_start, result.best_window_end
        where = "" if (start, end) == (0, len(document)) else f"  best window: characters {start}-{end}"
        excerpt = document[start:end]
        excerpt = excerpt if len(excerpt) <= EXCERPT else excerpt[: EXCERPT - 3] + "..."
        print(f"{rank:>3}. {result.score:+.4f}  #{result.index}{where}  (windows: {result.usage.windows})")
        print(f"       {excerpt!r}")
    print(f"usage: {reply.usage}".replace("\n", " "))


COMMANDS = {"health": _health, "models": _models, "chat": _chat, "embed": _embed, "rerank": _rerank}


def run(args: argparse.Namespace) -> int:
    """Run one client command; a refused call prints its code and message and returns 1."""
    with channel_for(args) as channel:
        try:
            COMMANDS[args.command](channel, args)
        except grpc.RpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0
