"""ONNX Runtime: provider choice, session options, IO binding on GPUs, warmup.

Provider choice: TensorRT, CUDA, CPU in that order as installed and allowed; the provider that is
really active is read from ``session.get_providers()`` after creation, because onnxruntime-gpu
lists CUDA and TensorRT as available even where their libraries cannot load (it then falls back to
CPU with an error log).
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.runtimes.base import ModelRuntime, TensorSpec

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
#: the static int8 export (``python -m training quantize``), served with precision int8
INT8_FILE = "model.int8.onnx"

# GPU providers that really came up in this process: None until the first session tells us. Later
# sessions only ask for these, so a GPU-less host pays for (and logs) the failed attempt once.
_working_gpu_providers: set[str] | None = None
_probe_lock = threading.Lock()

# ONNX Runtime's type strings -> numpy, for building TensorSpecs from session metadata.
_ORT_TYPES: dict[str, np.dtype[Any]] = {
    f"tensor({name})": np.dtype(np_type)
    for name, np_type in {
        "float": np.float32,
        "float16": np.float16,
        "double": np.float64,
        "int8": np.int8,
        "int16": np.int16,
        "int32": np.int32,
        "int64": np.int64,
        "uint8": np.uint8,
        "uint16": np.uint16,
        "uint32": np.uint32,
        "uint64": np.uint64,
        "bool": np.bool_,
        "string": np.object_,
    }.items()
}

#: ``intra_op_threads`` value that lets the runtime choose per model (the default).
AUTO_THREADS = -1
#: The auto rule's line: a model whose one-image run on one thread takes longer than this gets one
#: intra-op thread per core; a lighter one keeps a single thread. Light models are dominated by
#: per-call overhead, which more threads only add to, and a single thread leaves the other cores
#: to the event loop; heavy ones (convolutions over large images) scale with cores. The measured
#: gap between the two kinds is wide (RESULTS.md, "Threads per model").
HEAVY_MODEL_S = 0.002
_TIMING_RUNS = 3

_GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class OnnxOptions:
    """Session and provider options (a subset of the gateway settings)."""

    device: str = "auto"
    precision: str = "fp32"  # fp32, fp16 (model.fp16.onnx on a GPU) or int8 (model.int8.onnx)
    fp16_on_cpu: bool = False  # precision fp16: keep the fp16 file even on the CPU provider
    tensorrt: bool = True
    intra_op_threads: int = AUTO_THREADS  # -1: chosen per model at load (see HEAVY_MODEL_S)
    inter_op_threads: int = 1
    allow_spinning: bool = False
    graph_optimization: str = "all"
    cuda_prefer_nhwc: bool = True
    #: cuDNN's convolution algorithm choice for each new input shape (CUDA provider option
    #: ``cudnn_conv_algo_search``): exhaustive (ONNX Runtime's default), heuristic, default
    cudnn_conv_algo_search: str = "exhaustive"
    gpu_mem_limit_mb: int = 0
    cuda_graph: bool = False
    device_id: int = 0
    #: one session per padded batch size (OnnxRuntime.specialise)
    session_per_batch_size: bool = False


def _spec(node: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(node.type)
    if dtype is None:
        raise ValueError(f"tensor {node.name!r} has unsupported type {node.type}")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape)
    return TensorSpec(node.name, dtype, shape)


def cuda_provider_options(options: OnnxOptions) -> dict[str, Any]:
    """The CUDA provider's options from ours (ONNX Runtime's names and string values)."""
    cuda_options: dict[str, Any] = {
        "device_id": options.device_id,
        "prefer_nhwc": "1" if options.cuda_prefer_nhwc else "0",
        "cudnn_conv_algo_search": options.cudnn_conv_algo_search.upper(),
    }
    if options.gpu_mem_limit_mb > 0:
        cuda_options["gpu_mem_limit"] = options.gpu_mem_limit_mb * 1024 * 1024
        cuda_options["arena_extend_strategy"] = "kSameAsRequested"
    if options.cuda_graph:
        cuda_options["enable_cuda_graph"] = "1"
    return cuda_options


def candidate_providers(options: OnnxOptions) -> list[tuple[str, dict[str, Any]]]:
    """Providers to ask for, best first, with their options; CPU always last."""
    available = set(ort.get_available_providers())
    if _working_gpu_providers is not None:
        available &= _working_gpu_providers | {CPU}
    wanted: list[tuple[str, dict[str, Any]]] = []
    if options.device != "cpu":
        if options.tensorrt and TENSORRT in available and not options.cuda_graph:
            wanted.append(
                (
                    TENSORRT,
                    {
                        "device_id": options.device_id,
                        "trt_fp16_enable": options.precision == "fp16",
                    },
                )
            )
        if CUDA in available:
            wanted.append((CUDA, cuda_provider_options(options)))
    wanted.append((CPU, {}))
    return wanted


def session_options(options: OnnxOptions) -> ort.SessionOptions:
    """SessionOptions from the settings; spinning off by default (docs/ARCHITECTURE.md, known traps)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = _GRAPH_LEVELS[options.graph_optimization]
    # AUTO starts on one thread; OnnxRuntime measures and may reopen with one per core.
    threads = options.intra_op_threads
    so.intra_op_num_threads = 1 if threads == AUTO_THREADS else threads
    so.inter_op_num_threads = options.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    spinning = "1" if options.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    so.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    so.log_severity_level = 3  # provider fallback errors are reported by us, once, as a warning
    return so


class OnnxRuntime(ModelRuntime):
    """An ONNX model version on the best provider that really loads."""

    def __init__(self, version_dir: str | Path, options: OnnxOptions | None = None) -> None:
        self.options = options or OnnxOptions()
        version_dir = Path(version_dir)
        fp32_path = version_dir / "model.onnx"
        fp16_path = version_dir / "model.fp16.onnx"
        providers = candidate_providers(self.options)
        on_cpu_too = self.options.fp16_on_cpu
        use_fp16 = (
            self.options.precision == "fp16"
            and fp16_path.exists()
            and (len(providers) > 1 or on_cpu_too)
        )
        chosen = fp16_path if use_fp16 else fp32_path
        if self.options.precision == "int8":
            # No fallback: int8 answers differ from fp32's, so serving fp32 instead would be a
            # quiet change of answers; the version fails to load and its status says why.
            chosen = version_dir / INT8_FILE
            if not chosen.is_file():
                raise FileNotFoundError(
                    f"--precision int8 but {version_dir} has no {INT8_FILE} "
                    "(python -m training quantize adds one as a new version)"
                )
        self.session = self._create(chosen, providers)
        self.provider = self.session.get_providers()[0]
        if use_fp16 and self.provider not in GPU_PROVIDERS and not on_cpu_too:
            # fp16 kernels on a CPU are slower than fp32; the GPU did not come up, so use fp32.
            chosen = fp32_path
            self.session = self._create(chosen, [(CPU, {})])
            self.provider = CPU
        if self.options.device == "cuda" and self.provider not in GPU_PROVIDERS:
            self.close()  # the caller never gets this object to close
            raise RuntimeError(f"device=cuda but ONNX Runtime came up on {self.provider}")
        self.model_file = chosen
        self.inputs = [_spec(node) for node in self.session.get_inputs()]
        #: intra-op threads the session runs with (0 = one per core), after the auto rule
        self.intra_op_threads = self.options.intra_op_threads
        if self.intra_op_threads == AUTO_THREADS:
            self.intra_op_threads = 1
            if self.provider == CPU and self._one_image_seconds() > HEAVY_MODEL_S:
                self.options = replace(self.options, intra_op_threads=0)
                self.session = self._create(self.model_file, [(CPU, {})])
                self.intra_op_threads = 0
        self.outputs = [_spec(node) for node in self.session.get_outputs()]
        self._output_names = [spec.name for spec in self.outputs]
        self._on_gpu = self.provider in GPU_PROVIDERS
        # With cuDNN 9, every Conv rebuilds its cuDNN plan when the input shape differs from the
        # previous call's (no per-shape cache): about 0.4 s per change for ResNet50 on an H200.
        self.new_shapes_are_costly = self._on_gpu
        #: id of a session -> its CUDA graph's binding and fixed input and output buffers
        self._graphs: dict[int, tuple[Any, dict[str, Any], dict[str, Any]]] = {}
        #: batch size -> the session that runs exactly that size (see specialise)
        self._by_batch: dict[int, ort.InferenceSession] = {}
        #: where IO binding places device buffers; "cuda" on GPUs ("cpu" lets tests run the path)
        self.io_device = "cuda"

    def _one_image_seconds(self) -> float:
        """The fastest of a few one-image runs of zeros on the current session (the first run,
        which also allocates, is not counted)."""
        feeds = self.zero_feeds(1)
        self.session.run(None, feeds)
        best = float("inf")
        for _ in range(_TIMING_RUNS):
            started = time.perf_counter()
            self.session.run(None, feeds)
            best = min(best, time.perf_counter() - started)
        return best

    def _create(
        self, path: Path, providers: list[tuple[str, dict[str, Any]]]
    ) -> ort.InferenceSession:
        global _working_gpu_providers
        asks_gpu = any(name in GPU_PROVIDERS for name, _ in providers)
        if not asks_gpu or _working_gpu_providers is not None:
            return self._session(path, providers)
        with _probe_lock:
            # First GPU attempt in this process: silence ONNX Runtime's fallback noise (C++ error
            # logs and Python prints) and remember what really loaded.
            ort.set_default_logger_severity(4)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    session = self._session(path, providers)
            finally:
                ort.set_default_logger_severity(2)
            active = session.get_providers()
            _working_gpu_providers = {name for name in active if name in GPU_PROVIDERS}
            failed = [name for name, _ in providers if name in GPU_PROVIDERS and name not in active]
            if failed:
                log.warning("ONNX Runtime lists %s but they did not load here", ", ".join(failed))
            return session

    def _session(
        self, path: Path, providers: list[tuple[str, dict[str, Any]]]
    ) -> ort.InferenceSession:
        return ort.InferenceSession(
            str(path),
            sess_options=session_options(self.options),
            providers=[name for name, _ in providers],
            provider_options=[opts for _, opts in providers],
        )

    def specialise(self, batch_sizes: tuple[int, ...]) -> None:
        """One session per batch size, so that no session ever sees a second input shape.

        For batches padded to these sizes (``serving.batching``) on a GPU, where a session whose
        batch size changes rebuilds its convolution plans, and with ``cuda_graph``, whose graph
        is captured for one shape; each extra session holds its own copy of the model (memory,
        load time). Other sizes keep running on the first session.
        """
        sizes = sorted(set(batch_sizes))
        if len(sizes) < 2:
            return
        providers = [
            (self.provider, dict(candidate_providers(self.options)).get(self.provider, {}))
        ]
        if self.provider != CPU:
            providers.append((CPU, {}))
        self._by_batch = {sizes[0]: self.session}
        for size in sizes[1:]:
            self._by_batch[size] = self._session(self.model_file, providers)

    #: CUDA provider options reported by ``describe``, read back from the session (what ONNX
    #: Runtime really applied, not what was asked for)
    DESCRIBED_CUDA_OPTIONS = ("prefer_nhwc", "cudnn_conv_algo_search", "enable_cuda_graph")

    def describe(self) -> dict[str, str]:
        """Model file, the CUDA options in force ("" on other providers) and the batch sizes
        with a session of their own."""
        applied = {}
        if self.provider == CUDA:
            applied = self.session.get_provider_options().get(CUDA, {})
        return {
            "model_file": self.model_file.name,
            **{name: str(applied.get(name, "")) for name in self.DESCRIBED_CUDA_OPTIONS},
            "sessions": ",".join(map(str, self.specialised_sizes)),
        }

    @property
    def specialised_sizes(self) -> tuple[int, ...]:
        """The batch sizes with a session of their own (none unless specialised)."""
        return tuple(sorted(self._by_batch))

    def session_for(self, batch: int) -> ort.InferenceSession:
        """The session that runs a batch of ``batch`` rows."""
        return self._by_batch.get(batch, self.session)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. On a GPU, IO binding lets outputs land in pinned host memory in one copy."""
        session = self.session
        if self._by_batch:
            session = self.session_for(len(next(iter(inputs.values()))))
        if self._on_gpu:
            if self.options.cuda_graph and self.provider == CUDA:
                return self._predict_cuda_graph(inputs, session)
            return self._predict_io_binding(inputs, session)
        results = session.run(self._output_names, inputs)
        return dict(zip(self._output_names, results, strict=True))

    def _predict_cuda_graph(
        self, inputs: dict[str, np.ndarray], session: ort.InferenceSession | None = None
    ) -> dict[str, np.ndarray]:
        """CUDA graphs replay fixed device addresses: bind preallocated device buffers once (the
        batcher pads every batch to one size), then copy each batch into them in place."""
        device = self.options.device_id
        session = session or self.session
        graph = self._graphs.get(id(session))
        if graph is None:
            binding = session.io_binding()
            graph_inputs = {}
            for name, array in inputs.items():
                value = ort.OrtValue.ortvalue_from_numpy(
                    np.ascontiguousarray(array), self.io_device, device
                )
                binding.bind_ortvalue_input(name, value)
                graph_inputs[name] = value
            batch = next(iter(inputs.values())).shape[0]
            graph_outputs = {}
            for spec in self.outputs:
                shape = [batch, *spec.shape[1:]]
                if any(dim < 0 for dim in shape):
                    raise RuntimeError(
                        f"cuda_graph needs fixed output shapes; {spec.name} is {shape}"
                    )
                value = ort.OrtValue.ortvalue_from_shape_and_type(
                    shape, spec.dtype, self.io_device, device
                )
                binding.bind_ortvalue_output(spec.name, value)
                graph_outputs[spec.name] = value
            graph = self._graphs[id(session)] = (binding, graph_inputs, graph_outputs)
        binding, graph_inputs, graph_outputs = graph
        for name, array in inputs.items():
            if tuple(graph_inputs[name].shape()) != array.shape:
                raise RuntimeError(
                    f"cuda_graph was captured for {graph_inputs[name].shape()}, got {array.shape}"
                )
            graph_inputs[name].update_inplace(np.ascontiguousarray(array))
        session.run_with_iobinding(binding)
        return {name: value.numpy() for name, value in graph_outputs.items()}

    def _predict_io_binding(
        self, inputs: dict[str, np.ndarray], session: ort.InferenceSession | None = None
    ) -> dict[str, np.ndarray]:
        session = session or self.session
        binding = session.io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._output_names:
            binding.bind_output(name, self.io_device, self.options.device_id)
        session.run_with_iobinding(binding)
        results = binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        """Drop the session so its memory (host or GPU arena) is freed; idempotent.

        The CUDA graph's IO binding holds the native session (and device buffers) too, so it goes
        with it: with it kept, the session would outlive ``close``."""
        self._graphs = {}
        self._by_batch = {}
        self.__dict__.pop("session", None)
