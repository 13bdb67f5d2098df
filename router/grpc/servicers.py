"""ModelRouterService: decode, call the core, encode. No logic and no error handling here."""

from __future__ import annotations

from router.app import Router
from router.grpc import converters
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

UNUSABLE = "the router refused this model's contract; its log (model.unusable) says why"


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
        principal = converters.current_caller().principal
        # Which Triton servers hold a model, and why one is unusable, are internals: an admin's to see.
        return pb.ListModelsResponse(
            models=[
                converters.model_info_to_pb(m.contract, m.served_by if principal.admin else ())
                for m in registry.models()
                if principal.allows(m.contract.name)
            ],
            unusable_models=[
                pb.UnusableModel(name=name, problem=problem if principal.admin else UNUSABLE)
                for name, problem in sorted(registry.problems.items())
                if principal.allows(name)
            ],
        )
