"""`router check PATH`: what the router would refuse or trip on in a Triton model repository, before it ships.

Per model folder: config.pbtxt parsed with Triton's own ModelConfig; the `modelrouter.*` parameters read
by the same code the router serves with (contract.py), unknown keys flagged; the declared tensors held
against the task's tensor contract (tensor_contract.py); the tokenizer and other files loaded as the
router loads them (model_files.py), and its own limits compared with the contract; version folders and
the file each backend loads; Triton's queue policy. With `--triton ADDR` the router's own core also reads
that Triton (loading nothing) and makes one small call per model through it.

Errors are what the router or Triton would refuse; warnings are what works but is likely a mistake.
Exit status: 0 no errors, 1 errors, 2 the repository cannot be read.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adapters.triton.repository import ModelFolder, read_repository
from adapters.triton.tensor_contract import kind_of, tensor_problems
from router.core.errors import RouterError
from router.core.models.contract import KEYS, PREFIX, Task
from router.core.models.contract_reader import is_routed, parse_contract
from router.core.models.model_files import ModelFileError, ModelFiles, load_model_files

ERROR, WARNING = "error", "warning"


@dataclass
class Finding:
    severity: str
    check: str
    """config, parameters, tensors, files, tokenizer, versions, queue, triton."""
    message: str


@dataclass
class ModelReport:
    name: str
    kind: str = ""
    """The tensor contract the model is held to ("" when it is not routed or its contract is unreadable)."""
    routed: bool = True
    findings: list[Finding] = field(default_factory=list)
    smoke: str = ""
    """With --triton: what the one call through the router returned."""

    def error(self, check: str, message: str) -> None:
        self.findings.append(Finding(ERROR, check, message))

    def warn(self, check: str, message: str) -> None:
        self.findings.append(Finding(WARNING, check, message))

    @property
    def errors(self) -> int:
        return sum(f.severity == ERROR for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.severity == WARNING for f in self.findings)


def check_repository(path: Path, weights: bool = True) -> list[ModelReport]:
    """Check every model folder under `path`; `weights=False` skips the files backends load (model.onnx...)."""
    return [check_model(folder, weights) for folder in read_repository(path)]


def check_model(folder: ModelFolder, weights: bool = True) -> ModelReport:
    report = ModelReport(folder.name)
    if folder.config is None:
        report.error("config", folder.error or "config.pbtxt does not parse")
        return report
    config = folder.config
    if config["name"] != folder.name:
        report.error("config", f"config.pbtxt names the model {config['name']!r} but its folder is {folder.name!r}")
    _check_versions(folder, report, weights)
    description = folder.description()
    if not is_routed(description):
        report.routed = False
        return report
    _check_keys(description.parameters, report)
    try:
        contract = parse_contract(description)
    except RouterError as error:
        report.error("parameters", error.message)
        return report
    report.kind = kind_of(contract)
    for problem in tensor_problems(description, contract):
        report.error("tensors", problem)
    try:
        files = load_model_files(contract, folder.path)
    except ModelFileError as error:
        report.error("files", str(error))
    else:
        _check_tokenizer_limits(folder.path, files, report)
    if contract.task is not Task.GENERATE:
        _check_queue(config, report)
    return report


def _check_versions(folder: ModelFolder, report: ModelReport, weights: bool) -> None:
    if not folder.version_folders:
        report.error("versions", "no version folder (1/, 2/...): Triton loads nothing for this model")
        return
    for version in folder.missing_specific_versions():
        report.error("versions", f"version_policy names version {version}, which has no folder")
    if not folder.served_versions():
        report.error("versions", "the version_policy selects none of the version folders")
    model_file = folder.model_file
    if model_file is None:
        report.warn("versions", f"backend {folder.backend or '(none)'!r}: which file it loads is not known here")
        return
    for version in folder.served_versions():
        if (weights or model_file == "model.py") and not (folder.path / version / model_file).exists():
            report.error("versions", f"{version}/{model_file} is missing (the {folder.backend} backend loads it)")


def _check_keys(parameters: dict[str, str], report: ModelReport) -> None:
    for key in sorted(parameters):
        if not key.startswith(PREFIX) or key[len(PREFIX) :] in KEYS:
            continue
        close = difflib.get_close_matches(key[len(PREFIX) :], sorted(KEYS), n=1)
        hint = f"; did you mean {PREFIX}{close[0]}?" if close else ""
        report.error("parameters", f"{key} is not a key the router reads, so it would be ignored{hint}")


def _check_tokenizer_limits(path: Path, files: ModelFiles, report: ModelReport) -> None:
    """The tokenizer's own truncation and padding are turned off by the router; when they disagree with the
    contract, one of the two is likely wrong (the shipped MiniLM tokenizer truncates at 128)."""
    contract, limit = files.contract, files.tokenizer.shipped_max_length
    if limit is not None and limit != contract.max_sequence_length:
        report.warn(
            "tokenizer",
            f"{contract.tokenizer_file} truncates at {limit} tokens but {PREFIX}max_sequence_length is "
            f"{contract.max_sequence_length}: the router turns the tokenizer's truncation off and cuts at "
            f"{contract.max_sequence_length}; check which length the model takes, and remove the tokenizer's",
        )
    hf_config = path / "tokenizer_config.json"
    if hf_config.is_file():
        try:
            model_max = json.loads(hf_config.read_text()).get("model_max_length")
        except ValueError:
            model_max = None
        if isinstance(model_max, int) and model_max < contract.max_sequence_length:
            report.warn(
                "tokenizer",
                f"tokenizer_config.json says model_max_length {model_max}, less than "
                f"{PREFIX}max_sequence_length {contract.max_sequence_length}",
            )


def _check_queue(config: dict, report: ModelReport) -> None:
    batching = config.get("dynamic_batching")
    if batching is None:
        report.warn(
            "queue",
            "no dynamic_batching: Triton does not bound this model's queue; add "
            "dynamic_batching { default_queue_policy { max_queue_size: N } }",
        )
        return
    policy = batching.get("default_queue_policy", {})
    if not int(policy.get("max_queue_size", 0) or 0):
        report.warn("queue", "default_queue_policy has no max_queue_size: Triton's queue for this model is unbounded")
    if int(batching.get("priority_levels", 0) or 0) < 3:
        report.warn(
            "queue",
            "fewer than 3 priority_levels: critical requests wait in Triton's queue behind default and sheddable "
            "work; add priority_levels: 3 and default_priority_level: 2 to dynamic_batching",
        )
    if int(policy.get("default_timeout_microseconds", 0) or 0):
        report.warn(
            "queue",
            "default_queue_policy sets default_timeout_microseconds: with a timeout in its queue policy, Triton "
            "2.51's dynamic batcher holds requests for up to 500 ms; the router cancels work whose deadline has "
            "passed, in Triton too, so leave it out",
        )


async def smoke(address: str, repository: Path, reports: list[ModelReport], timeout_s: float = 120.0) -> None:
    """Read `address`'s models with the router's own core (tokenizers from `repository`) and make one small
    call per routed model through it; findings go to the reports."""
    from adapters.triton.backend import TritonBackend
    from router.core.config import RequestLimits
    from router.core.models.registry import ModelRegistry
    from router.core.services.embed import EmbedService
    from router.core.services.generate import Delta, GenerateService
    from router.core.services.pipeline import RequestPipeline
    from router.core.services.rerank import RerankService
    from router.core.services.types import EmbedRequest, GenerateRequest, RerankRequest

    backend = TritonBackend([address], retries=1, discovery_interval_s=60.0)
    try:
        await asyncio.wait_for(backend.start(), timeout_s)
        if not await backend.is_ready():
            for report in reports:
                report.error("triton", f"{address} is not ready (or does not answer)")
            return
        registry = ModelRegistry(backend, repository)
        await registry.refresh()
        pipeline = RequestPipeline(registry, RequestLimits())
        served = {model.contract.name: model for model in registry.models()}
        for report in reports:
            if not report.routed or report.errors:
                continue
            if report.name in registry.problems:
                report.error(
                    "triton", f"as {address} reports it, the router refuses it: {registry.problems[report.name]}"
                )
                continue
            model = served.get(report.name)
            if model is None:
                report.error("triton", f"{address} does not hold it ready")
                continue
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout_s):
                    if model.contract.task is Task.EMBED:
                        result = await EmbedService(pipeline).embed(EmbedRequest(report.name, ["hello world"]))
                        summary = f"1 embedding of {result.dimensions or result.embeddings.shape[-1]} dimensions"
                    elif model.contract.task is Task.RERANK:
                        query, documents = "capital of France", ["Paris is the capital of France.", "Bananas."]
                        result = await RerankService(pipeline).rerank(RerankRequest(report.name, query, documents))
                        summary = "2 scores: " + ", ".join(f"{r.score:.3f}" for r in result.results)
                    else:
                        request = GenerateRequest(report.name, prompt="Hello", max_tokens=2)
                        stream = GenerateService(pipeline).generate(request)
                        text = "".join([d.text async for d in stream if isinstance(d, Delta)])
                        summary = f"generated {text!r}"
            except RouterError as error:
                report.error("triton", f"the smoke call failed: {error.reason}: {error.message}")
                continue
            except TimeoutError:
                report.error("triton", f"the smoke call took over {timeout_s:g} s")
                continue
            report.smoke = f"{summary} in {(time.perf_counter() - started) * 1000:.0f} ms"
    finally:
        await backend.close()


def render_text(path: Path, reports: list[ModelReport]) -> str:
    lines = [f"router check {path}"]
    width = max((len(r.name) for r in reports), default=10)
    for report in reports:
        if not report.routed:
            status = "not routed (no modelrouter.task)"
        elif report.errors:
            status = _count(report.errors, "error")
        else:
            status = "ok" + (f", {_count(report.warnings, 'warning')}" if report.warnings else "")
        lines.append(f"  {report.name:<{width}}  {report.kind or '-':<24}  {status}")
        for finding in report.findings:
            lines.append(f"      {finding.severity:<7} [{finding.check}] {finding.message}")
        if report.smoke:
            lines.append(f"      smoke   {report.smoke}")
    bad = sum(1 for r in reports if r.errors)
    errors, warnings = sum(r.errors for r in reports), sum(r.warnings for r in reports)
    lines.append(
        f"{_count(len(reports), 'model')}: {len(reports) - bad} without errors, {bad} with errors "
        f"({_count(errors, 'error')}, {_count(warnings, 'warning')})"
    )
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


def render_json(path: Path, reports: list[ModelReport]) -> str:
    return json.dumps(
        {
            "repository": str(path),
            "ok": not any(r.errors for r in reports),
            "models": [{**asdict(r), "errors": r.errors, "warnings": r.warnings} for r in reports],
        },
        indent=2,
    )


def run(path: Path, triton: str | None = None, as_json: bool = False, weights: bool = True) -> int:
    if not path.is_dir():
        print(f"router check: {path} is not a folder")
        return 2
    reports = check_repository(path, weights)
    if triton:
        asyncio.run(smoke(triton, path, reports))
    print(render_json(path, reports) if as_json else render_text(path, reports))
    return 1 if any(r.errors for r in reports) else 0
