"""Transport-neutral core, in rooms:

- `models/`: each model's contract (read from its Triton config), its tokenizer and files, the registry
  of served models and versions, the catalog callers list;
- `text/`: tokenizing and windowing, pooling, embedding encodings, chat prompts and sampling options;
- `scheduling/`: one scheduler per model and its parts (fair queue, batch former, admission, output
  cache, drain rates, stream gate, a rollout's hand-over);
- `services/`: the request pipeline and the Embed, Rerank and Generate services, their request and
  result types, request validation and usage accounting.

Beside them: `errors.py` (reasons and RouterError), `config.py` (settings the core reads), `auth.py`
(callers and their powers) and `backend.py` (what the core needs of a model server). Nothing here imports
tritonclient or generated protobuf code: the gRPC layer converts requests into `services.types`, and the
Triton adapter is reached only through `backend.Backend`.
"""
