"""model-router: a gRPC service in front of NVIDIA Triton that keeps models up."""
