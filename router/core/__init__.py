"""Transport-neutral core: contracts, tokenizing and windowing, the request pipeline, and the per-model
scheduler in parts (fair queue, batch former, admission, output cache).

Nothing here imports tritonclient or generated protobuf code: the gRPC layer converts requests into the
types in `types.py`, and the backend adapter is reached only through `backend.Backend`.
"""
