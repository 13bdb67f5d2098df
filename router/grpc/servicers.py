"""ModelRouterService: decode, call the core, encode. No logic and no error handling here."""

from __future__ import annotations

from router.app import Router
from router.grpc import converters
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc


class ModelRouterServicer(pb_grpc.ModelRouterServiceServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        result = await self.router.embed.embed(
            converters.embed_request_from_pb(request), converters.call_context(context)
        )
        return converters.embed_response_to_pb(result)

    async def Rerank(self, request: pb.RerankRequest, context) -> pb.RerankResponse:
        result = await self.router.rerank.rerank(
            converters.rerank_request_from_pb(request), converters.call_context(context)
        )
        return converters.rerank_response_to_pb(result)

    async def Generate(self, request: pb.GenerateRequest, context):
        events = self.router.generate.generate(
            converters.generate_request_from_pb(request), converters.call_context(context)
        )
        try:
            async for event in events:
                yield converters.generate_event_to_pb(event)
        finally:
            await events.aclose()  # a caller that left stops the generation now, not at garbage collection

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        registry = self.router.registry
        return pb.ListModelsResponse(
            models=[converters.model_info_to_pb(m.contract, m.served_by) for m in registry.models()],
            unusable_models=[
                pb.UnusableModel(name=name, problem=problem) for name, problem in sorted(registry.problems.items())
            ],
        )
