"""The files beside a model's `config.pbtxt` that the router reads: its tokenizer, and for generation its
chat template, checked against the contract.

The registry loads them when it serves a model; `router check` loads them the same way, so what the
check passes the router serves. Every problem is a ModelFileError naming the file or parameter.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

from router.core.models.contract import PREFIX, ModelContract, Task
from router.core.text.prompting import ChatTemplate
from router.core.text.tokenize import ModelTokenizer


class ModelFileError(ValueError):
    """A model's files do not fit its contract."""


@dataclass
class ModelFiles:
    contract: ModelContract
    """The contract with what only the files tell (the pad token's id)."""
    tokenizer: ModelTokenizer
    digest: str
    """The tokenizer file's SHA-256: a new version with the same tokenizer may take over the old's queue."""
    chat_template: ChatTemplate | None = None
    end_ids: tuple[int, ...] = ()


def load_model_files(contract: ModelContract, folder: Path) -> ModelFiles:
    """Load and check the files of the model in `folder` (its folder in the model repository)."""
    path = folder / contract.tokenizer_file
    if not path.is_file():
        raise ModelFileError(f"{PREFIX}tokenizer: {contract.tokenizer_file!r} is not a file in {folder}")
    raw = path.read_bytes()
    try:
        tokenizer = ModelTokenizer.from_file(path)
    except Exception as error:  # noqa: BLE001 - the tokenizers library raises plain Exception
        raise ModelFileError(f"{PREFIX}tokenizer: {contract.tokenizer_file!r} does not load: {error}") from None
    try:
        contract = dataclasses.replace(contract, pad_id=tokenizer.pad_id(contract.pad_token))
    except ValueError as error:
        raise ModelFileError(f"{PREFIX}pad_token: {error}") from None
    half = contract.max_sequence_length // 2
    for input_type, prefix in contract.input_prefixes:
        # Every window holds the prefix: leave the text at least half of it.
        tokens = len(tokenizer.raw.encode(prefix, add_special_tokens=False).ids)
        if tokens > half:
            raise ModelFileError(
                f"{PREFIX}input_prefixes: the {input_type} prefix has {tokens} tokens; "
                f"at most half of max_sequence_length ({contract.max_sequence_length})"
            )
    if contract.pair_template:
        # Every window holds the template and the query: leave the document at least half of it.
        overhead = tokenizer.pair_overhead(contract.pair_template) + contract.max_query_tokens
        if overhead > half:
            raise ModelFileError(
                f"{PREFIX}pair_template: its {tokenizer.pair_overhead(contract.pair_template)} tokens and "
                f"max_query_tokens ({contract.max_query_tokens}) leave a document less than half of "
                f"max_sequence_length ({contract.max_sequence_length})"
            )
    files = ModelFiles(contract, tokenizer, hashlib.sha256(raw).hexdigest())
    if contract.task is Task.GENERATE:
        _generation_files(files, folder)
    return files


def _generation_files(files: ModelFiles, folder: Path) -> None:
    contract = files.contract
    if contract.chat_template_file:
        path = folder / contract.chat_template_file
        if not path.is_file():
            raise ModelFileError(f"{PREFIX}chat_template: {contract.chat_template_file!r} is not a file in {folder}")
        try:
            files.chat_template = ChatTemplate(path.read_text())
        except Exception as error:  # noqa: BLE001 - jinja2's syntax errors and the like
            message = f"{PREFIX}chat_template: {contract.chat_template_file!r} does not parse: {error}"
            raise ModelFileError(message) from None
    if not contract.end_tokens:
        raise ModelFileError(f"a generate model needs {PREFIX}end_tokens")
    try:
        files.end_ids = tuple(files.tokenizer.token_id(token) for token in contract.end_tokens)
    except ValueError as error:
        raise ModelFileError(f"{PREFIX}end_tokens: {error}") from None
