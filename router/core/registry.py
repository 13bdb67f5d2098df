"""The models the router serves: each one's contract, tokenizer and scheduler, kept in step with the backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from router.core import errors
from router.core.admission import AdmissionConfig, TenantLimiter
from router.core.backend import Backend
from router.core.cache import OutputCache
from router.core.contract import ModelContract, Task, is_routed, parse_contract
from router.core.errors import ErrorKind, RouterError
from router.core.scheduler import ModelScheduler, SchedulerConfig
from router.core.tokenize import ModelTokenizer

log = structlog.get_logger(__name__)


@dataclass
class ServedModel:
    contract: ModelContract
    tokenizer: ModelTokenizer
    scheduler: ModelScheduler


class ModelRegistry:
    def __init__(
        self,
        backend: Backend,
        repository: Path,
        scheduling: SchedulerConfig,
        cache: OutputCache | None = None,
        admission: AdmissionConfig | None = None,
        tenants: TenantLimiter | None = None,
    ) -> None:
        self.backend = backend
        self.repository = repository
        self.scheduling = scheduling
        self.admission = admission
        self.tenants = tenants
        """Tenant rate limits, shared by every model."""
        self.cache = cache
        """One output cache shared by every model (keys hold the model's name and version)."""
        self._models: dict[str, ServedModel] = {}
        self.problems: dict[str, str] = {}
        """Models the backend has but the router cannot serve, with why (shown in logs and health)."""
        self.loaded = False
        """Set once the backend's model list has been read."""

    async def refresh(self) -> None:
        """Read the backend's ready models again; keep schedulers of models whose contract is unchanged."""
        descriptions = await self.backend.describe_models()
        models: dict[str, ServedModel] = {}
        problems: dict[str, str] = {}
        for description in descriptions:
            if not is_routed(description):
                continue
            try:
                contract = parse_contract(description)
                current = self._models.get(contract.name)
                if current is not None and current.contract == contract:
                    models[contract.name] = current
                    continue
                tokenizer = ModelTokenizer.from_file(self.repository / contract.name / contract.tokenizer_file)
            except Exception as error:  # a bad model (contract, tokenizer file) must not stop the others
                problems[description.name] = str(error)
                continue
            models[contract.name] = ServedModel(
                contract,
                tokenizer,
                ModelScheduler(contract, self.backend, self.scheduling, self.cache, self.admission, self.tenants),
            )
            log.info("model.ready", model=contract.name, version=contract.version, task=contract.task.value)
        for name, problem in problems.items():
            if self.problems.get(name) != problem:
                log.error("model.unusable", model=name, problem=problem)
        self._models, self.problems, self.loaded = models, problems, True

    def models(self) -> list[ServedModel]:
        return [self._models[name] for name in sorted(self._models)]

    def get(self, name: str, task: Task) -> ServedModel:
        if not name:
            raise errors.invalid(
                errors.MODEL_NOT_FOUND,
                "model is required",
                [errors.FieldViolation("model", "name a model listed by ListModels")],
            )
        served = self._models.get(name)
        if served is None and not self.loaded:
            raise RouterError(
                ErrorKind.NOT_READY,
                errors.MODEL_NOT_READY,
                "the router is still loading its models",
                retry_after_s=1.0,
            )
        if served is None:
            raise RouterError(
                ErrorKind.NOT_FOUND,
                errors.MODEL_NOT_FOUND,
                f"model {name!r} is not served; ListModels shows the models that are",
                metadata={"model": name},
            )
        if served.contract.task is not task:
            raise errors.invalid(
                errors.WRONG_TASK,
                f"model {name!r} is a {served.contract.task.value} model, not {task.value}",
                [errors.FieldViolation("model", f"{name!r} does not {task.value}")],
            )
        return served
