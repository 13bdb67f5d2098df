"""The models the router serves: each one's contract, tokenizer and scheduler, kept in step with the backend.

A model's scheduler lives as long as its contract is unchanged: which servers hold the model
(`served_by`) is kept beside it, so a shard going up or down never rebuilds the scheduler (its queue,
drain rate and calibration). When the backend's model index cannot be read, the last known models are
kept and served; a name the router has not seen is answered UNAVAILABLE (retry), not NOT_FOUND, until
the index answers again. A model whose contract or tokenizer is broken is left out, with why, and the
others are served.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import structlog

from router.core import errors
from router.core.backend import Backend
from router.core.config import AdmissionConfig, BatchingConfig
from router.core.errors import RouterError
from router.core.models.contract import ModelContract, ModelDescription, Task
from router.core.models.contract_reader import is_routed, parse_contract
from router.core.models.model_files import ModelFiles, load_model_files
from router.core.scheduling.cache import OutputCache
from router.core.scheduling.fleet_share import ALONE, FleetShare
from router.core.scheduling.scheduler import ModelScheduler
from router.core.scheduling.streams import StreamGate
from router.core.scheduling.tenant_limits import TenantLimiter
from router.core.text.prompting import ChatTemplate
from router.core.text.tokenize import ModelTokenizer
from router.observability import metrics

log = structlog.get_logger(__name__)


@dataclass
class Generation:
    """What a generation model needs besides its contract: its chat template, end tokens and stream gate."""

    template: ChatTemplate | None
    end_ids: tuple[int, ...]
    gate: StreamGate


@dataclass
class ServedModel:
    contract: ModelContract
    tokenizer: ModelTokenizer
    scheduler: ModelScheduler
    served_by: tuple[str, ...] = ()
    """The backend servers that hold the model now (changes without touching the scheduler)."""
    tokenizer_digest: str = ""
    generation: Generation | None = None
    versions: tuple[str, ...] = ()
    """Every version the backend servers hold ready, newest first (the contract's is the first)."""
    older: dict[str, ModelDescription] = dataclasses.field(default_factory=dict)
    """The older versions held, by version: served when a request names one (registry.get)."""


class ModelRegistry:
    def __init__(
        self,
        backend: Backend,
        repository: Path,
        batching: BatchingConfig | None = None,
        cache: OutputCache | None = None,
        admission: AdmissionConfig | None = None,
        tenants: TenantLimiter | None = None,
        share: FleetShare = ALONE,
    ) -> None:
        self.backend = backend
        self.share = share
        """This router's part of what each server takes at once, for every model's scheduler."""
        self.repository = repository
        self.batching = batching or BatchingConfig()
        self.admission = admission
        self.tenants = tenants
        """Tenant rate limits, shared by every model."""
        self.cache = cache
        """One output cache shared by every model (keys hold the model's name and version)."""
        self._models: dict[str, ServedModel] = {}
        self._older: dict[tuple[str, str], ServedModel] = {}
        """Older versions requests have named, (name, version) -> served; each built on first use."""
        self.problems: dict[str, str] = {}
        """Models the backend has but the router cannot serve, with why (logs, metrics, ListModels)."""
        self.loaded = False
        """Set once the backend's model list has been read."""
        self.index_ok = False
        """Whether the last read of the backend's model index succeeded."""

    async def refresh(self) -> None:
        """Read the backend's ready models again; keep the schedulers of models whose contract is unchanged.

        If the index cannot be read, everything known is kept (and `index_ok` is cleared)."""
        try:
            descriptions = await self.backend.describe_models()
        except Exception as error:  # noqa: BLE001 - whatever failed, the last known models stay
            if self.index_ok or not self.loaded:
                log.warning("models.index_unavailable", error=str(error), kept=len(self._models))
            self.index_ok = False
            return
        models: dict[str, ServedModel] = {}
        problems: dict[str, str] = {}
        # An older version keeps its scheduler while it is held: whether a request named it before, or it
        # was the newest until now (its queue then goes on serving the callers that pin it).
        known = dict(self._older) | {(m.contract.name, m.contract.version): m for m in self._models.values()}
        older: dict[tuple[str, str], ServedModel] = {}
        for description in descriptions:
            if not is_routed(description):
                continue
            try:
                served = models[description.name] = self._serve(description)
            except Exception as error:  # a bad model (contract, tokenizer file) must not stop the others
                problems[description.name] = str(error)
                continue
            served.older = {d.version: d for d in description.older}
            for held in description.older:
                kept = known.get((held.name, held.version))
                if kept is not None and kept is not served and self._unchanged(held, kept):
                    self._place(kept, held)
                    older[(held.name, held.version)] = kept
        self._older = older
        for name, problem in problems.items():
            if self.problems.get(name) != problem:
                log.error("model.unusable", model=name, problem=problem)
        for name in set(self._models) | set(self.problems) | set(models) | set(problems):
            metrics.MODEL_USABLE.labels(name).set(1 if name in models else 0)
        self._models, self.problems, self.loaded, self.index_ok = models, problems, True, True

    @staticmethod
    def _same_contract(contract: ModelContract, served: ServedModel) -> bool:
        """Whether `served` already serves `contract` (the pad id comes from the tokenizer, not the config)."""
        return dataclasses.replace(contract, pad_id=served.contract.pad_id) == served.contract

    @classmethod
    def _unchanged(cls, description: ModelDescription, served: ServedModel) -> bool:
        try:
            return cls._same_contract(parse_contract(description), served)
        except RouterError:
            return False

    @staticmethod
    def _place(served: ServedModel, description: ModelDescription) -> None:
        """Which servers hold `served` now, and which versions they hold (the scheduler stays)."""
        served.served_by, served.versions = description.served_by, description.versions
        served.scheduler.shards = len(description.served_by)

    def _new_served(
        self, files: ModelFiles, description: ModelDescription, generation: Generation | None = None
    ) -> ServedModel:
        """A model version served with a scheduler of its own."""
        scheduler = ModelScheduler(
            files.contract, self.backend, self.batching, self.cache, self.admission, self.tenants, self.share
        )
        scheduler.shards = len(description.served_by)
        return ServedModel(
            files.contract,
            files.tokenizer,
            scheduler,
            description.served_by,
            files.digest,
            generation,
            description.versions,
        )

    def _serve(self, description: ModelDescription) -> ServedModel:
        contract = parse_contract(description)
        current = self._models.get(contract.name)
        if current is not None and self._same_contract(contract, current):
            self._place(current, description)
            if current.generation is not None:
                current.generation.gate.shards = len(description.served_by)
                current.generation.gate.admit_waiting()
            return current
        files = load_model_files(contract, self.repository / contract.name)
        contract = files.contract
        served = self._new_served(files, description, self._generation(files, len(description.served_by)))
        if (
            current is not None
            and current.tokenizer_digest == files.digest
            and dataclasses.replace(current.contract, version=contract.version) == contract
        ):
            # A new version with the same tokenizer and tensors: what the old version's scheduler still
            # holds when that version is unloaded runs on this one.
            current.scheduler.successor = served.scheduler
        log.info("model.ready", model=contract.name, version=contract.version, task=contract.task.value)
        return served

    def _generation(self, files: ModelFiles, shards: int) -> Generation | None:
        contract = files.contract
        if contract.task is not Task.GENERATE:
            return None
        # The same bounds as an encoder's queue: waiting streams, and their tokens (prompt + max_tokens).
        config = self.admission or AdmissionConfig()
        tokens = config.queue_tokens_for(contract.max_batch_size, contract.max_sequence_length)
        gate = StreamGate(
            contract.name,
            contract.max_batch_size,
            max_waiting=config.max_queued_requests if config.enabled else 1 << 30,
            max_waiting_tokens=tokens if config.enabled else 1 << 60,
            tenants=self.tenants,
            share=self.share,
        )
        gate.shards = shards
        return Generation(files.chat_template, files.end_ids, gate)

    def models(self) -> list[ServedModel]:
        return [self._models[name] for name in sorted(self._models)]

    def knows(self, name: str) -> bool:
        """Whether `name` is a model the router serves or has refused (bounded by the repository)."""
        return name in self._models or name in self.problems

    def health(self) -> dict[str, bool]:
        """Each model the backend has and the router routes: whether it is served."""
        return {**{name: False for name in self.problems}, **{name: True for name in self._models}}

    def get(self, name: str, task: Task, version: str = "") -> ServedModel:
        """The model served as `name` for `task`; with `version`, only if that is the version served."""
        served = self.lookup(name)
        if served.contract.task is not task:
            raise errors.invalid(
                errors.WRONG_TASK,
                f"model {name!r} is a {served.contract.task.value} model, not {task.value}",
                [errors.FieldViolation("model", f"{name!r} does not {task.value}")],
            )
        if version and version != served.contract.version:
            return self._older_version(served, version)
        return served

    def _older_version(self, served: ServedModel, version: str) -> ServedModel:
        """An older version a request names: served while some server holds it, with a scheduler of its own
        (built on first use; the newest version's queue, drain rate and calibration are not disturbed)."""
        name = served.contract.name
        found = self._older.get((name, version))
        if found is not None:
            return found
        description = served.older.get(version)
        if description is None:
            held = ", ".join(served.versions) or served.contract.version
            raise RouterError(
                errors.MODEL_VERSION_NOT_FOUND,
                f"model {name!r} has no version {errors.echo(version)} ready (the model servers hold {held}; "
                f"{served.contract.version} is served when no version is named)",
                metadata={"model": name, "served_version": served.contract.version},
            )
        try:
            contract = parse_contract(description)
            if contract.task is not served.contract.task:
                raise ValueError(f"version {version} is a {contract.task.value} model")
            files = load_model_files(contract, self.repository / name)
        except (RouterError, ValueError) as error:
            log.error("model.version_unusable", model=name, version=version, problem=str(error))
            raise RouterError(
                errors.MODEL_UNUSABLE,
                f"model {name!r} version {errors.echo(version)} is held but its configuration is unusable; "
                "the router's log says why",
                retry_after_s=5.0,
                metadata={"model": name},
            ) from None
        older = self._new_served(files, description)
        log.info("model.version_ready", model=name, version=version, task=files.contract.task.value)
        self._older[(name, version)] = older
        return older

    def lookup(self, name: str, field: str = "model") -> ServedModel:
        """The model served as `name`, whatever its task; `field` names the request field for errors."""
        if not name:
            raise errors.invalid(
                errors.MODEL_REQUIRED,
                f"{field} is required",
                [errors.FieldViolation(field, "name a model listed by ListModels")],
            )
        served = self._models.get(name)
        if served is None:
            raise self._missing(name)
        return served

    def _missing(self, name: str) -> RouterError:
        if not self.loaded:
            return RouterError(errors.MODEL_NOT_READY, "the router is still loading its models", retry_after_s=1.0)
        if name in self.problems:
            return RouterError(
                errors.MODEL_UNUSABLE,
                f"model {name!r} is deployed but its configuration is unusable; the router's log says why",
                retry_after_s=5.0,
                metadata={"model": name},
            )
        if not self.index_ok:
            return RouterError(
                errors.BACKEND_INDEX_UNAVAILABLE,
                f"model {errors.echo(name)} is not among the last known models, and the model servers' "
                "index cannot be read now",
                retry_after_s=1.0,
                metadata={"model": errors.clip(name)},
            )
        return RouterError(
            errors.MODEL_NOT_FOUND,
            f"model {errors.echo(name)} is not served; ListModels shows the models that are",
            metadata={"model": errors.clip(name)},
        )
