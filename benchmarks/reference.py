"""Is the offline reference the model the server serves?

A benchmark checks every served answer against the offline answers of ``model.onnx`` in a local
model repository. When the server serves another version or another model, those answers
disagree and the run would report an accuracy failure that is really a mix-up of references. So
before a run the server is asked what it serves (version, signature, class names, through
``clients``), the local version it names is taken as the reference when the repository has it,
and every difference is said plainly in the results and on the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.prepare import ModelFiles, find_model


@dataclass
class Reference:
    """The local model files used as the offline reference, and how they compare to the server."""

    model_files: ModelFiles | None
    served: dict[str, Any] | None
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool | None:
        """True: same model as far as the server says; False: differs; None: cannot tell."""
        if self.differences:
            return False
        if self.served is None or self.model_files is None:
            return None
        return True

    def to_dict(self) -> dict[str, Any]:
        local = self.model_files
        return {
            "matches": self.matches,
            "served": self.served,
            "local": {
                "directory": str(local.directory) if local else None,
                "version": _version_of(local),
                "class_names": local.class_names if local else None,
            },
            "differences": list(self.differences),
            "notes": list(self.notes),
        }


def _version_of(files: ModelFiles | None) -> int | None:
    if files is None:
        return None
    if files.directory.name.isdigit():  # what servers call the version: the directory's name
        return int(files.directory.name)
    version = files.metadata.get("version")
    return version if isinstance(version, int) else None


def client_target(target: str, protocol: str) -> tuple[str, str]:
    """(target, clients protocol) for asking a benchmark target about its model."""
    if protocol in ("grpc", "v2-grpc"):  # TF Serving's gRPC metadata carries the class names
        address = target.split("://", 1)[-1].rstrip("/")
        return f"grpc://{address}", "grpc"
    return target, ("v2" if protocol == "v2" else "rest")


def ask_server(
    target: str, protocol: str, model: str, version: int | None, label: str | None
) -> tuple[dict[str, Any] | None, str | None]:
    """What the server says it serves, or (None, why it could not be asked)."""
    from clients import Client, ServingError

    address, client_protocol = client_target(target, protocol)
    try:
        with Client(address, protocol=client_protocol, timeout=5.0) as client:
            metadata = client.metadata(model, version=version, label=label)
    except (ServingError, ValueError, OSError) as error:
        return None, f"{type(error).__name__}: {error}"
    signature: dict[str, Any] = {}
    if metadata.signatures:
        info = metadata.signature()
        signature = {
            "inputs": {n: [s.dtype.name, list(s.shape)] for n, s in info.inputs.items()},
            "outputs": {n: [s.dtype.name, list(s.shape)] for n, s in info.outputs.items()},
        }
    return {
        "version": metadata.version,
        "class_names": metadata.class_names,
        "signature": signature,
    }, None


def _local_signature(files: ModelFiles, key: str) -> dict[str, list[Any]]:
    return {
        str(spec.get("name")): [str(spec.get("dtype")), list(spec.get("shape") or [])]
        for spec in files.metadata.get(key) or []
        if isinstance(spec, dict)
    }


def compare(served: dict[str, Any], files: ModelFiles) -> list[str]:
    """Each way the served model differs from the local reference, in words."""
    differences = []
    local_version = _version_of(files)
    if served.get("version") is not None and served["version"] != local_version:
        differences.append(
            f"the server answers with version {served['version']}, the offline reference is"
            f" version {local_version} ({files.directory})"
        )
    names = served.get("class_names")
    if names and files.class_names and list(names) != list(files.class_names):
        differences.append(
            f"class names differ: served {names[:5]}..., local {files.class_names[:5]}..."
        )
    signature = served.get("signature") or {}
    for key in ("inputs", "outputs"):
        local = _local_signature(files, key)
        remote = signature.get(key) or {}
        for name, (dtype, shape) in remote.items():
            if name in local and (local[name][0] != dtype or _shape_differs(local[name][1], shape)):
                differences.append(
                    f"{key[:-1]} {name!r} differs: served {dtype} {shape}, local"
                    f" {local[name][0]} {local[name][1]}"
                )
    return differences


def _shape_differs(local: list[Any], served: list[Any]) -> bool:
    if len(local) != len(served):
        return True
    return any(a != b and -1 not in (a, b) for a, b in zip(local, served, strict=True))


def resolve_reference(
    repository: str | Path,
    model: str,
    version: int | None,
    label: str | None,
    target: str,
    protocol: str,
) -> Reference:
    """The local reference for a run against ``target``: the version the server serves."""
    files = find_model(repository, model, version)
    served, problem = ask_server(target, protocol, model, version, label)
    if served is None:
        reference = Reference(files, None)
        reference.notes.append(
            f"the server did not say which model it serves ({problem}); the offline reference"
            f" {files.directory if files else '(none)'} could not be checked against it"
        )
        return reference
    served_version = served.get("version")
    if (
        version is None
        and served_version is not None
        and files is not None
        and _version_of(files) != served_version
    ):
        candidate = find_model(repository, model, int(served_version))
        if candidate is not None:
            note = (
                f"the server answers with version {served_version}: the offline reference is"
                f" {candidate.directory}, not the newest local version"
            )
            return Reference(candidate, served, compare(served, candidate), [note])
    if files is None:
        return Reference(
            None,
            served,
            [f"the local repository {repository} has no {model!r} to take offline answers from"],
        )
    return Reference(files, served, compare(served, files))


def mismatch_reason(reference: Reference) -> str | None:
    """One failure reason naming every difference, or None when the reference is the served one."""
    if not reference.differences:
        return None
    return "the offline reference is not the served model: " + "; ".join(reference.differences)
