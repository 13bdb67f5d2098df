"""Transport-neutral core: contracts, tokenizing, windowing, packing, scheduling.

Nothing here imports tritonclient or generated protobuf code: the gRPC layer converts requests into the
types in `types.py`, and the backend adapter is reached only through `backend.Backend`.
"""
