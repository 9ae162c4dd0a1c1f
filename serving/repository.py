"""The model repository: scan folders, apply version policies and labels, load, reload, unload.

Layout (see docs/ARCHITECTURE.md): ``<root>/<model>/<version>/model.onnx`` (+ ``model.fp16.onnx``,
``metadata.json``), and optionally ``<root>/models.config`` (TF Serving's text protobuf) for version
policies and labels. Hot reload polls the folders: a new version is loaded and warmed in a worker
thread and only then becomes AVAILABLE (the switch is one state change on the event loop); a
removed version stops taking requests, is drained, then unloaded. A version that fails to load is
reported (END with an error), its runtime closed, and skipped by the policy, so it never displaces
a serving version; it is retried only when its files change.

Every filesystem access (models.config, folder listings, stats, metadata.json) runs in a worker
thread: on a slow or network volume a scan must not stall the requests the event loop serves. The
loop only applies the result, so ``resolve()`` reads ``models`` without locks.

Size: scanning, version policy, loading, reload and unload are one state machine over
``models``; keeping it in one module keeps every state change in one place.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients import wire
from clients.preprocessing import DeclaredPreprocessing
from serving.batching import BatchingConfig, DynamicBatcher
from serving.errors import NotFound, Unavailable, shown
from serving.lifecycle import VersionState
from serving.metrics import GatewayMetrics
from serving.observe import BatchRecord
from serving.runtimes.base import ModelRuntime

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
FP16_MODEL_FILE = "model.fp16.onnx"
METADATA_FILE = "metadata.json"

#: (mtime_ns, size) of each file a load reads; a failed version is retried when it changes.
Fingerprint = tuple[int, ...]

#: The poller loads a new version folder only once nothing in it has changed for this long: a
#: folder written in place (not written beside and renamed) is not loaded half-written.
SETTLE_S = 1.0


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve: ``latest`` N, ``all`` or ``specific`` ones."""

    kind: str = "latest"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def select(self, candidates: set[int]) -> set[int]:
        """The versions to serve out of the loadable ``candidates``."""
        if self.kind == "all":
            return set(candidates)
        if self.kind == "specific":
            return candidates & self.versions
        return set(sorted(candidates, reverse=True)[: max(1, self.num_versions)])


@dataclass
class ModelVersion:
    """One version of one model and its lifecycle (TF Serving state names)."""

    model: str
    version: int
    path: Path
    state: VersionState = VersionState.LOADING
    error: str | None = None
    runtime: ModelRuntime | None = None
    batcher: DynamicBatcher | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    fingerprint: Fingerprint = ()
    inflight: int = 0
    #: How raw pixels become the model's float input, when metadata.json declares it (checked
    #: against the model when the version loaded: ``check_preprocessing``).
    declared_preprocessing: DeclaredPreprocessing | None = None

    @property
    def class_names(self) -> list[str]:
        """Labels in output order from metadata.json (``[]`` when it names none)."""
        return [str(name) for name in self.metadata.get("class_names") or []]


@dataclass
class ModelEntry:
    """A model: its folder, policy, labels and versions (serving, loading and failed)."""

    name: str
    path: Path
    policy: VersionPolicy
    labels: dict[str, int] = field(default_factory=dict)
    versions: dict[int, ModelVersion] = field(default_factory=dict)

    def available(self) -> list[ModelVersion]:
        """Versions taking requests, newest first."""
        return sorted(
            (mv for mv in self.versions.values() if mv.state is VersionState.AVAILABLE),
            key=lambda mv: mv.version,
            reverse=True,
        )


@dataclass(frozen=True)
class VersionFiles:
    """A version folder as a scan found it."""

    path: Path
    fingerprint: Fingerprint


RuntimeFactory = Callable[[Path], ModelRuntime]
ModelsConfig = dict[str, tuple[VersionPolicy | None, dict[str, int], str]]
#: model -> (its folder, version -> files), as read from disk by one scan
ScanResult = dict[str, tuple[Path, dict[int, VersionFiles]]]


def _fingerprint(version_dir: Path) -> Fingerprint:
    values: list[int] = []
    for name in (MODEL_FILE, FP16_MODEL_FILE, METADATA_FILE):
        try:
            stat = (version_dir / name).stat()
        except OSError:
            values += (0, 0)
        else:
            values += (stat.st_mtime_ns, stat.st_size)
    return tuple(values)


def last_change(version_dir: Path) -> float:
    """The newest mtime or ctime (seconds) of a version folder and everything in it. Blocking."""
    newest = 0.0
    for path in (version_dir, *version_dir.rglob("*")):
        try:
            stat = path.stat()
        except OSError:  # removed while walking: the folder is still changing
            return float("inf")
        newest = max(newest, stat.st_mtime, stat.st_ctime)
    return newest


def read_metadata(version_dir: Path) -> dict[str, Any]:
    """A version's metadata.json, checked for the shape of the fields the gateway reads
    (``{}`` when the file is absent); ValueError naming the problem otherwise. Blocking."""
    try:
        data = (version_dir / METADATA_FILE).read_bytes()
    except FileNotFoundError:
        return {}
    try:
        metadata = json.loads(data)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{METADATA_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ValueError(f"{METADATA_FILE} holds {type(metadata).__name__}, not an object")
    names = metadata.get("class_names")
    if names is not None and not isinstance(names, list):
        raise ValueError(f"{METADATA_FILE}: class_names is not a list")
    preprocessing = metadata.get("preprocessing")
    if preprocessing is not None and not isinstance(preprocessing, dict):
        raise ValueError(f"{METADATA_FILE}: preprocessing is not an object")
    return metadata


def check_labels(metadata: dict[str, Any], runtime: ModelRuntime) -> None:
    """ValueError when metadata.json's class_names do not count the classes of the first output
    (``[-1, classes]``): its labels would be served for the wrong scores."""
    names = metadata.get("class_names")
    if not names or not runtime.outputs:
        return
    output = runtime.outputs[0]
    if len(output.shape) == 2 and output.shape[1] > 0 and len(names) != output.shape[1]:
        raise ValueError(
            f"{METADATA_FILE} names {len(names)} classes, output '{output.name}' has "
            f"{output.shape[1]}"
        )


def check_preprocessing(
    metadata: dict[str, Any], runtime: ModelRuntime
) -> DeclaredPreprocessing | None:
    """The preprocessing metadata.json declares (``inside_model: false``), None when it declares
    none; ValueError when the declaration is malformed or does not describe the model's input."""
    declared = DeclaredPreprocessing.from_metadata(metadata.get("preprocessing"))
    if declared is None:
        return None
    if len(runtime.inputs) != 1:
        raise ValueError(f"{METADATA_FILE} declares preprocessing for a model of several inputs")
    spec = runtime.inputs[0]
    mismatch = declared.matches(spec.name, spec.dtype, tuple(spec.shape))
    if mismatch:
        raise ValueError(f"{METADATA_FILE}: {mismatch}")
    return declared


def _close_quietly(runtime: ModelRuntime, what: str) -> None:
    try:
        runtime.close()
    except Exception:  # the load already failed; report this one too, but keep the first error
        log.exception("closing the runtime of %s failed", what)


def parse_models_config(text: str) -> ModelsConfig:
    """models.config text -> {model: (policy or None, labels, folder name)}."""
    config = wire.read_models_config(text)
    result: ModelsConfig = {}
    for model in config.model_config_list.config:
        policy: VersionPolicy | None = None
        if model.HasField("model_version_policy"):
            choice = model.model_version_policy.WhichOneof("policy_choice")
            if choice == "all":
                policy = VersionPolicy("all")
            elif choice == "specific":
                policy = VersionPolicy(
                    "specific", versions=frozenset(model.model_version_policy.specific.versions)
                )
            elif choice == "latest":
                policy = VersionPolicy(
                    "latest", num_versions=model.model_version_policy.latest.num_versions or 1
                )
        # base_path is where TF Serving (in its container) finds the model; here the folder of
        # the same name under the repository is the model.
        folder = Path(model.base_path).name if model.base_path else model.name
        result[model.name] = (policy, dict(model.version_labels), folder)
    return result


class ModelRepository:
    """All models of one repository folder, kept in sync with the disk by ``sync()``."""

    def __init__(
        self,
        root: Path,
        runtime_factory: RuntimeFactory,
        batching: BatchingConfig,
        default_policy: VersionPolicy | None = None,
        label_overrides: dict[str, dict[str, int]] | None = None,
        config_file: Path | None = None,
        metrics: GatewayMetrics | None = None,
        drain_timeout_s: float = 30.0,
    ) -> None:
        self.root = Path(root)
        self.runtime_factory = runtime_factory
        self.batching = batching
        self.default_policy = default_policy or VersionPolicy()
        self.label_overrides = label_overrides or {}
        self.config_file = config_file
        self.metrics = metrics
        self.drain_timeout_s = drain_timeout_s
        #: every version's batcher calls this after each batch (the tracer's, set by the
        #: gateway when tracing is on; None: batches are not reported)
        self.on_batch: Callable[[BatchRecord], None] | None = None
        self.models: dict[str, ModelEntry] = {}
        self._failed: dict[tuple[str, int], Fingerprint] = {}
        self._config: ModelsConfig = {}
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None

    # --- lookups ------------------------------------------------------------------------------
    def resolve(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> ModelVersion:
        """The version that should answer a request, or NotFound / Unavailable naming why."""
        entry = self.models.get(name)
        if entry is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFound(f"model {shown(name)} not found (models: {known})")
        if label is not None:
            if label not in entry.labels:
                known = ", ".join(sorted(entry.labels)) or "none"
                raise NotFound(
                    f"label {shown(label)} of model '{name}' not found (labels: {known})"
                )
            version = entry.labels[label]
        if version is not None:
            mv = entry.versions.get(version)
            if mv is None:
                serving = ", ".join(str(v.version) for v in entry.available()) or "none"
                raise NotFound(
                    f"version {version} of model '{name}' not found (serving: {serving})"
                )
            if mv.state is not VersionState.AVAILABLE:
                reason = f": {mv.error}" if mv.error else ""
                raise Unavailable(
                    f"version {version} of model '{name}' is not available ({mv.state.name}{reason})"
                )
            return mv
        available = entry.available()
        if not available:
            if not entry.versions:
                raise NotFound(f"model '{name}' has no versions (nothing under {entry.path.name}/)")
            raise Unavailable(f"model '{name}' has no version ready")
        return available[0]

    def entry(self, name: str) -> ModelEntry:
        """The model entry, or NotFound."""
        entry = self.models.get(name)
        if entry is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFound(f"model {shown(name)} not found (models: {known})")
        return entry

    def ready(self) -> bool:
        """Every model with versions on disk has one AVAILABLE (and there is such a model).

        A model that models.config names but training has not exported yet does not hold the
        whole gateway back from readiness; a model whose every version failed does."""
        with_versions = [entry for entry in self.models.values() if entry.versions]
        return bool(with_versions) and all(entry.available() for entry in with_versions)

    # --- scanning (the blocking part runs in a worker thread) ---------------------------------
    def _read_config(self, previous: ModelsConfig) -> ModelsConfig:
        path = self.config_file or self.root / "models.config"
        if not path.exists():
            return {}
        try:
            return parse_models_config(path.read_text())
        except Exception as exc:  # a half-written or broken config must not stop serving
            log.error("cannot parse %s, keeping the previous one: %s", path, exc)
            return previous

    def _scan(
        self,
        config: ModelsConfig,
        settle_s: float = 0.0,
        known: frozenset[tuple[str, int]] = frozenset(),
    ) -> ScanResult:
        """The models and versions on disk. With ``settle_s``, a version not ``known`` yet whose
        folder changed within the last ``settle_s`` seconds is left for a later scan."""
        found: ScanResult = {}
        settled_before = time.time() - settle_s
        folders = {name: folder for name, (_, _, folder) in config.items()}
        if self.root.is_dir():
            for child in self.root.iterdir():
                if (
                    child.is_dir()
                    and not child.name.startswith(".")
                    and child.name not in folders.values()
                ):
                    folders.setdefault(child.name, child.name)
        for name, folder in folders.items():
            model_dir = self.root / folder
            versions: dict[int, VersionFiles] = {}
            if model_dir.is_dir():
                for child in model_dir.iterdir():
                    # Temporary folders (".tmp-3") are not digits; a version needs its ONNX file.
                    if child.name.isdigit() and (child / MODEL_FILE).exists():
                        version = int(child.name)
                        if (
                            settle_s > 0
                            and (name, version) not in known
                            and last_change(child) > settled_before
                        ):
                            log.debug("model %s version %s is still changing", name, version)
                            continue
                        versions[version] = VersionFiles(child, _fingerprint(child))
            if versions or name in config:
                found[name] = (model_dir, versions)
        return found

    def _read_disk(
        self, previous: ModelsConfig, settle_s: float, known: frozenset[tuple[str, int]]
    ) -> tuple[ModelsConfig, ScanResult]:
        config = self._read_config(previous)
        return config, self._scan(config, settle_s, known)

    async def sync(self, settle_s: float = 0.0) -> None:
        """One scan: load new versions, unload removed ones, update labels and policies.

        ``settle_s`` (the poller's): a new version folder that changed within that many seconds
        waits for a later scan, so one written in place is not loaded before it is complete."""
        async with self._lock:
            known = frozenset(
                (name, version)
                for name, entry in self.models.items()
                for version, mv in entry.versions.items()
                if mv.state is not VersionState.END
            )
            # Disk in a worker thread; the state changes below stay on the loop.
            self._config, found = await asyncio.to_thread(
                self._read_disk, self._config, settle_s, known
            )
            for name, (model_dir, on_disk) in found.items():
                policy, labels, _ = self._config.get(name, (None, {}, name))
                entry = self.models.get(name)
                if entry is None:
                    entry = ModelEntry(name, model_dir, policy or self.default_policy)
                    self.models[name] = entry
                entry.policy = policy or self.default_policy
                entry.labels = {**labels, **self.label_overrides.get(name, {})}
                await self._sync_model(entry, on_disk)
            for name in list(self.models):
                if name not in found:
                    await self._sync_model(self.models[name], {})
                    del self.models[name]
                    log.info("model %s removed", name)

    async def _sync_model(self, entry: ModelEntry, on_disk: dict[int, VersionFiles]) -> None:
        for version in list(entry.versions):
            mv = entry.versions[version]
            if version not in on_disk and mv.state is VersionState.END:
                del entry.versions[version]  # a failed version whose folder is gone
                self._failed.pop((entry.name, version), None)
        while True:
            candidates = {
                version
                for version, files in on_disk.items()
                if self._failed.get((entry.name, version)) != files.fingerprint
            }
            desired = entry.policy.select(candidates)
            to_load = [
                v for v in sorted(desired, reverse=True)
                if v not in entry.versions or entry.versions[v].state not in (VersionState.AVAILABLE, VersionState.LOADING)
            ]  # fmt: skip
            if not to_load:
                break
            results = [await self._load(entry, v, on_disk[v]) for v in to_load]
            if all(results):
                break
            # A version failed: choose again without it, so the one already serving stays.
        for mv in list(entry.versions.values()):
            if mv.state is VersionState.AVAILABLE and mv.version not in desired:
                await self._unload(entry, mv)

    async def _load(self, entry: ModelEntry, version: int, files: VersionFiles) -> bool:
        path = files.path
        mv = ModelVersion(entry.name, version, path, fingerprint=files.fingerprint)
        entry.versions[version] = mv
        self._set_state(mv, VersionState.LOADING)
        started = time.perf_counter()
        runtime: ModelRuntime | None = None
        try:
            # metadata.json first: a broken one fails the version before a session exists.
            metadata = await asyncio.to_thread(read_metadata, path)
            runtime = await asyncio.to_thread(self.runtime_factory, path)
            check_labels(metadata, runtime)
            declared = check_preprocessing(metadata, runtime)
            batcher = DynamicBatcher(runtime, entry.name, version, self.batching, self.metrics)
            batcher.on_batch = self.on_batch
        except Exception as exc:
            if runtime is not None:  # never served: free its session (and GPU memory) now
                await asyncio.to_thread(_close_quietly, runtime, f"{entry.name}/{version}")
            mv.state = VersionState.END
            mv.error = f"failed to load: {type(exc).__name__}: {exc}"
            self._failed[(entry.name, version)] = mv.fingerprint
            self._set_state(mv, VersionState.END)
            log.error("model %s version %s %s", entry.name, version, mv.error)
            return False
        mv.metadata, mv.runtime, mv.batcher = metadata, runtime, batcher
        mv.declared_preprocessing = declared
        self._set_state(
            mv, VersionState.AVAILABLE
        )  # the switch: from here on resolve() may return it
        self._failed.pop((entry.name, version), None)
        info = {
            **runtime.describe(),
            "padded_batch_sizes": ",".join(map(str, batcher.padded_sizes)),
        }
        if self.metrics is not None:
            self.metrics.model_provider.labels(entry.name, str(version), runtime.provider).set(1)
            self.metrics.set_runtime_info(entry.name, version, runtime.provider, info)
        log.info(
            "model %s version %s AVAILABLE on %s (%s, %.0f ms incl. warmup; %s)",
            entry.name, version, runtime.provider, getattr(runtime, "model_file", path),
            (time.perf_counter() - started) * 1000,
            " ".join(f"{name}={value}" for name, value in info.items() if value) or "no options",
        )  # fmt: skip
        return True

    async def _unload(self, entry: ModelEntry, mv: ModelVersion) -> None:
        self._set_state(mv, VersionState.UNLOADING)  # resolve() stops returning it at once
        log.info("model %s version %s unloading (draining)", entry.name, mv.version)
        end = time.monotonic() + self.drain_timeout_s
        while (mv.inflight or (mv.batcher and not mv.batcher.idle)) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        if mv.batcher is not None:
            mv.batcher.close()
        self._set_state(mv, VersionState.END)
        entry.versions.pop(mv.version, None)
        if self.metrics is not None:
            self.metrics.forget_version(
                entry.name, mv.version, mv.runtime.provider if mv.runtime else None
            )
        log.info("model %s version %s unloaded", entry.name, mv.version)

    def _set_state(self, mv: ModelVersion, state: VersionState) -> None:
        mv.state = state
        if self.metrics is not None:
            self.metrics.set_state(mv.model, mv.version, None if mv.error else state)

    # --- polling ------------------------------------------------------------------------------
    def start_polling(self, interval_s: float) -> None:
        """Scan every ``interval_s`` seconds in the background (0 = never)."""
        if interval_s > 0 and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll(interval_s))

    async def _poll(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync(settle_s=SETTLE_S)
            except Exception:  # the poller must survive anything the disk throws at it
                log.exception("repository scan failed")

    async def close(self) -> None:
        """Stop polling, drain and unload every version."""
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        async with self._lock:
            for entry in self.models.values():
                for mv in list(entry.versions.values()):
                    if mv.state is VersionState.AVAILABLE:
                        await self._unload(entry, mv)
