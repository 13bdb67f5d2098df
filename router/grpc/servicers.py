"""ModelRouterService: decode, call the core, encode. No logic and no error handling here."""

from __future__ import annotations

from router.app import Router
from router.grpc import converters
from router.grpc.caller import call_context, current_caller
from router.grpc.embed_wire import embed_response_to_pb, embed_stream_response_to_pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

UNUSABLE = "the router refused this model's contract; its log (model.unusable) says why"


class ModelRouterServicer(pb_grpc.ModelRouterServiceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        call = call_context(context, request)
        result = await self.router.embed.embed(converters.embed_request_from_pb(request), call)
        return embed_response_to_pb(result)

    async def EmbedStream(self, request_iterator, context):
        # The first part sets the options, criticality among them: read it before the call's context.
        first = await anext(aiter(request_iterator), None)
        results = self.router.embed.embed_stream(
            converters.embed_parts_from_pb(_chain(first, request_iterator)),
            call_context(context, getattr(first, "request", None)),
            current_caller().check_model,
        )
        try:
            async for offset, result in results:
                yield embed_stream_response_to_pb(offset, result)
        finally:
            await results.aclose()

    async def Rerank(self, request: pb.RerankRequest, context) -> pb.RerankResponse:
        result = await self.router.rerank.rerank(
            converters.rerank_request_from_pb(request), call_context(context, request)
        )
        return converters.rerank_response_to_pb(result)

    async def Generate(self, request: pb.GenerateRequest, context):
        events = self.router.generate.generate(
            converters.generate_request_from_pb(request), call_context(context, request)
        )
        try:
            async for event in events:
                yield converters.generate_event_to_pb(event)
        finally:
            await events.aclose()  # a caller that left stops the generation now, not at garbage collection

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        caller = current_caller()
        page = self.router.catalog.page(
            caller, converters.task_from_pb(request.task), request.page_size, request.page_token
        )
        # Which Triton servers hold a model, and why one is unusable, are internals: an admin's to see.
        admin = caller.principal.admin
        return pb.ListModelsResponse(
            models=[converters.model_info_to_pb(m, admin) for m in page.models],
            unusable_models=[
                pb.UnusableModel(name=name, problem=problem if admin else UNUSABLE) for name, problem in page.unusable
            ],
            next_page_token=page.next_token,
        )

    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.GetModelResponse:
        caller = current_caller()
        served = self.router.catalog.get(request.name, caller)
        return pb.GetModelResponse(model=converters.model_info_to_pb(served, caller.principal.admin))


async def _chain(first, rest):
    """The stream's messages again, the first (already read; None: there was none) included."""
    if first is None:
        return
    yield first
    async for message in rest:
        yield message
