"""The gRPC transport: servicers, converters, interceptors, server. The only importer of generated code."""
