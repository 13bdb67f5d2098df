"""A Triton model repository read from disk, as Triton would read it, without loading anything.

Each model folder's `config.pbtxt` is parsed with Triton's own `ModelConfig` protobuf (tritonclient ships
it) into the JSON form Triton reports over gRPC, so the router's contract reader sees the same thing it
sees from a running server. `router check` builds on this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from adapters.triton.fleet import describe
from router.core.models.contract import ModelDescription

# The file each backend loads from a version folder, when the config names none.
BACKEND_FILES = {
    "python": "model.py",
    "onnxruntime": "model.onnx",
    "tensorrt": "model.plan",
    "pytorch": "model.pt",
    "tensorflow": "model.savedmodel",
    "openvino": "model.xml",
}
PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
}


@dataclass
class ModelFolder:
    path: Path
    config: dict | None = None
    """config.pbtxt in the JSON form Triton reports; None when it does not parse."""
    error: str | None = None
    """Why config.pbtxt does not parse (or is missing)."""
    version_folders: tuple[str, ...] = ()
    """Numeric version folders present, newest first."""
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def backend(self) -> str:
        config = self.config or {}
        return config.get("backend") or PLATFORM_BACKENDS.get(config.get("platform", ""), "")

    @property
    def model_file(self) -> str | None:
        """The file the backend loads from each version folder (None: a backend this does not know)."""
        config = self.config or {}
        return config.get("default_model_filename") or BACKEND_FILES.get(self.backend)

    def served_versions(self) -> tuple[str, ...]:
        """The versions Triton would load under the config's version policy, newest first."""
        policy = (self.config or {}).get("version_policy", {})
        present = self.version_folders
        if "all" in policy:
            return present
        if "specific" in policy:
            wanted = {str(v) for v in policy["specific"].get("versions", [])}
            return tuple(v for v in present if v in wanted)
        count = int(policy.get("latest", {}).get("num_versions", 1) or 1)
        return present[:count]

    def missing_specific_versions(self) -> list[str]:
        policy = (self.config or {}).get("version_policy", {})
        wanted = [str(v) for v in policy.get("specific", {}).get("versions", [])]
        return [v for v in wanted if v not in self.version_folders]

    def description(self) -> ModelDescription:
        """What a Triton holding this model would report of it (the newest served version)."""
        assert self.config is not None
        versions = self.served_versions() or ("1",)
        return describe(self.config, versions[0], (), versions)


def read_model_folder(path: Path) -> ModelFolder:
    folder = ModelFolder(path)
    versions = [child.name for child in path.iterdir() if child.is_dir() and child.name.isdigit()]
    folder.version_folders = tuple(sorted(versions, key=int, reverse=True))
    config_path = path / "config.pbtxt"
    if not config_path.is_file():
        folder.error = "config.pbtxt is missing"
        return folder
    try:
        message = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as error:
        folder.error = f"config.pbtxt does not parse as Triton's ModelConfig: {error}"
        return folder
    folder.config = json_format.MessageToDict(message, preserving_proto_field_name=True)
    folder.config.setdefault("name", path.name)  # Triton names a model by its folder when the config does not
    return folder


def read_repository(path: Path) -> list[ModelFolder]:
    """Every model folder of the repository (a folder holding config.pbtxt or a version folder), by name."""
    folders = []
    for child in sorted(path.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if (child / "config.pbtxt").exists() or any(c.is_dir() and c.name.isdigit() for c in child.iterdir()):
            folders.append(read_model_folder(child))
    return folders
