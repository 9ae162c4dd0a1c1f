"""Export a model you bring (a .keras file, a SavedModel directory or an ONNX file) into the
model repository, under the same contract, parity gate and publishing as the package's own models.

``python -m training export --from PATH --name NAME --class-names a,b,c|labels.txt [--scale S]
[--mean M1,M2,M3 --std S1,S2,S3] [--layout nhwc|nchw] [--softmax] [--images DIR]
[--keep-float-input]``

The model's input size and channels come from the model itself; the command line declares what
turns uint8 pixels into what the model expects: ``x = pixels * scale``, then ``(x - mean) / std``
per channel, then the layout (NCHW models get a transpose). That preprocessing is built into the
exported graph in front of the model, so the version takes the repository's uint8 NHWC ``image``
and answers ``probabilities``, like every other version: every server, the image endpoint and the
client send raw pixels.

- ``--keep-float-input`` (ONNX sources): the graph keeps the model's own float input (name,
  layout, size) and the preprocessing is *declared* instead, in ``metadata.json``'s
  ``preprocessing`` (``inside_model: false``, the form of ``clients.preprocessing``), which the
  gateway's image endpoint and ``Client.classify`` apply; the gate compares on the same inputs.
- Keras and SavedModel sources get a SavedModel (TF Serving, with warmup records) and ONNX fp32
  and fp16 converted from it (tf2onnx); ONNX sources get the ONNX files only (TF Serving cannot
  load them), with the preprocessing nodes spliced in front of the graph.
- The parity gate compares every exported file with the model the user gave (run by Keras,
  TensorFlow or ONNX Runtime, the preprocessing applied in numpy) on the images in ``--images``
  or, without them, on generated pixels over the whole 0-255 range.
- Everything that can be refused is checked before anything is written: the file, the input
  (one 4-D float or uint8 image input with a fixed size), the output (one ``[batch, classes]``
  probability vector whose classes match the names) and the options. A refusal is a
  :class:`ModelRefused`, one line naming what is wrong; the command leaves no folder behind.
"""

from __future__ import annotations

import copy
import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.images import IMAGE_SUFFIXES, read_image
from training.export import (
    INPUT_NAME,
    MIN_PARITY_IMAGES,
    OUTPUT_NAME,
    ExportError,
    ExportRequest,
    gate_and_publish,
    remove_if_empty,
    stage_version,
    write_repository_configs,
)

#: Rows of a probability vector must sum to 1 within this, and lie in [0, 1] within it.
PROBABILITY_TOLERANCE = 1e-3
#: At most this many images are read from --images for the parity gate.
MAX_PARITY_IMAGES = 2000
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
SOURCE_NAMES = {"keras": "Keras model", "saved_model": "SavedModel", "onnx": "ONNX model"}


class ModelRefused(ExportError):
    """The model or the options cannot be exported as asked; the message (one line) says why."""


@dataclass(frozen=True)
class Preprocessing:
    """uint8 NHWC pixels -> the model's input: ``x * scale``, ``(x - mean) / std``, layout."""

    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str = "nhwc"
    softmax: bool = False

    def apply(self, pixels: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
        """What the exported graph computes before the model, in numpy (float32, as the graph)."""
        x: np.ndarray = pixels.astype(np.float32)
        if self.scale is not None:
            x = x * np.float32(self.scale)
        if self.mean is not None and self.std is not None:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "nchw":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x.astype(dtype, copy=False)

    def describe(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "layout": self.layout.upper(),
            "softmax_added": self.softmax,
        }


@dataclass
class SourceModel:
    """A loaded model as the user gave it, with its one input and one output described."""

    kind: str
    path: Path
    input_name: str
    input_shape: list[int | None]  # as the model declares it, None for a free dimension
    input_dtype: np.dtype[Any]
    output_name: str
    output_shape: list[int | None]
    predict: Callable[[np.ndarray], np.ndarray]  # model-input batch -> raw output
    handle: Any = None  # the Keras model, the loaded SavedModel or the onnx.ModelProto
    signature_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --- the command line's values ---------------------------------------------------------------------


def parse_class_names(value: str) -> list[str]:
    """A labels file (one name a line) when ``value`` is a file, else a comma-separated list."""
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        where = f"labels file {value}"
    else:
        names = [part.strip() for part in value.split(",")]
        where = "--class-names"
        if any(not name for name in names):
            raise ModelRefused(f"--class-names {value!r} has an empty name")
    if len(names) < 2:
        raise ModelRefused(f"{where} names {len(names)} class(es); a classifier needs at least 2")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ModelRefused(f"{where} names {', '.join(map(repr, duplicates))} more than once")
    return names


def parse_floats(option: str, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(part) for part in value.split(","))
    except ValueError:
        raise ModelRefused(f"{option} {value!r} is not a comma-separated list of numbers") from None
    if not all(np.isfinite(numbers)):
        raise ModelRefused(f"{option} {value!r} holds a value that is not finite")
    return numbers


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ModelRefused(
            f"--name {name!r} is not a model name (letters, digits, '_', '.', '-', "
            "starting with a letter or digit)"
        )
    return name


def source_kind(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise ModelRefused(f"{path} is a directory without saved_model.pb, not a SavedModel")
    if not path.exists():
        raise ModelRefused(f"{path} does not exist")
    if path.suffix == ".keras":
        return "keras"
    if path.suffix == ".onnx":
        return "onnx"
    raise ModelRefused(f"{path} is neither a .keras file, a SavedModel directory nor an .onnx file")


# --- loading the source --------------------------------------------------------------------------


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def load_source(path: Path) -> SourceModel:
    kind = source_kind(path)
    if kind == "keras":
        return _load_keras(path)
    if kind == "saved_model":
        return _load_saved_model(path)
    return _load_onnx(path)


def _dims(shape: Any) -> list[int | None]:
    return [None if d is None else int(d) for d in shape]


def _load_keras(path: Path) -> SourceModel:
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:
        unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", str(error))
        if unknown:
            raise ModelRefused(
                f"unknown layer '{unknown.group(1)}' in {path.name}: import the module that "
                "registers it (keras.saving.register_keras_serializable) or export a SavedModel"
            ) from None
        raise ModelRefused(
            f"cannot load {path.name} as a Keras model: {_first_line(error)}"
        ) from None
    inputs, outputs = list(model.inputs), list(model.outputs)
    if len(inputs) != 1:
        raise ModelRefused(f"the model has {len(inputs)} inputs; an image classifier has one")
    if len(outputs) != 1:
        raise ModelRefused(f"the model has {len(outputs)} outputs; a classifier has one")
    from training.models import float32_copy

    model = float32_copy(model)

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(batch, batch_size=256, verbose=0))

    return SourceModel(
        kind="keras", path=path, handle=model,
        input_name=inputs[0].name, input_shape=_dims(inputs[0].shape),
        input_dtype=np.dtype(inputs[0].dtype),
        output_name=(getattr(model, "output_names", None) or [outputs[0].name])[0],
        output_shape=_dims(outputs[0].shape), predict=predict,
    )  # fmt: skip


def _load_saved_model(path: Path) -> SourceModel:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:
        raise ModelRefused(f"cannot load {path} as a SavedModel: {_first_line(error)}") from None
    signatures = dict(loaded.signatures)
    if not signatures:
        raise ModelRefused(f"the SavedModel {path} has no signatures")
    key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
    function = signatures[key]
    specs = function.structured_input_signature[1]
    if len(specs) != 1:
        raise ModelRefused(
            f"signature '{key}' has {len(specs)} inputs; an image classifier has one"
        )
    (input_key, spec), outputs = next(iter(specs.items())), function.structured_outputs
    if len(outputs) != 1:
        raise ModelRefused(f"signature '{key}' has {len(outputs)} outputs; a classifier has one")
    (output_key, output_spec) = next(iter(outputs.items()))

    def predict(batch: np.ndarray) -> np.ndarray:
        rows = [
            function(**{input_key: tf.constant(batch[i : i + 256])})[output_key].numpy()
            for i in range(0, len(batch), 256)
        ]
        return np.concatenate(rows)

    return SourceModel(
        kind="saved_model", path=path, handle=loaded, signature_key=key,
        input_name=input_key, input_shape=_dims(spec.shape.as_list()),
        input_dtype=np.dtype(spec.dtype.as_numpy_dtype),
        output_name=output_key, output_shape=_dims(output_spec.shape.as_list()), predict=predict,
    )  # fmt: skip


ONNX_FLOATS = {1: np.float32, 10: np.float16, 11: np.float64, 2: np.uint8}


def _onnx_dims(value_info: Any) -> list[int | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _load_onnx(path: Path) -> SourceModel:
    import onnx
    import onnxruntime as ort

    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as error:
        raise ModelRefused(
            f"cannot load {path.name} as an ONNX model: {_first_line(error)}"
        ) from None
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelRefused(f"the model has {len(inputs)} inputs; an image classifier has one")
    if len(proto.graph.output) != 1:
        raise ModelRefused(f"the model has {len(proto.graph.output)} outputs; a classifier has one")
    (source_input,), source_output = inputs, proto.graph.output[0]
    elem_type = source_input.type.tensor_type.elem_type
    if elem_type not in ONNX_FLOATS:
        type_name = onnx.TensorProto.DataType.Name(elem_type).lower()
        raise ModelRefused(
            f"input '{source_input.name}' is {type_name}: float or uint8 images expected"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:
        raise ModelRefused(f"ONNX Runtime cannot load {path.name}: {_first_line(error)}") from None
    input_shape = _onnx_dims(source_input)
    fixed_batch = bool(input_shape) and input_shape[0] is not None

    def predict(batch: np.ndarray) -> np.ndarray:
        step = 1 if fixed_batch else 256
        rows = [
            session.run([source_output.name], {source_input.name: batch[i : i + step]})[0]
            for i in range(0, len(batch), step)
        ]
        return np.concatenate(rows)

    return SourceModel(
        kind="onnx", path=path, handle=proto,
        input_name=source_input.name, input_shape=input_shape,
        input_dtype=np.dtype(ONNX_FLOATS[elem_type]),
        output_name=source_output.name, output_shape=_onnx_dims(source_output), predict=predict,
    )  # fmt: skip


# --- the checks before anything is written ----------------------------------------------------------


def _shown(shape: list[int | None]) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


def image_geometry(source: SourceModel, layout: str | None) -> tuple[str, int, int, int]:
    """(layout, height, width, channels) of the model's input; ModelRefused when it is not a
    fixed-size 4-D image input of 1 or 3 channels."""
    shape, name = source.input_shape, source.input_name
    if len(shape) != 4:
        raise ModelRefused(
            f"input '{name}' has shape {_shown(shape)}: an image classifier takes "
            "[batch, height, width, channels] (or [batch, channels, height, width] with --layout nchw)"
        )
    if layout is None:
        last, second = shape[3], shape[1]
        layout = "nchw" if second in (1, 3) and last not in (1, 3) else "nhwc"
    height, width, channels = (shape[2], shape[3], shape[1]) if layout == "nchw" else shape[1:]
    if height is None or width is None or channels is None:
        raise ModelRefused(
            f"input '{name}' has shape {_shown(shape)}: its {layout.upper()} height, width and "
            "channels must be fixed"
        )
    if channels not in (1, 3):
        raise ModelRefused(
            f"input '{name}' has shape {_shown(shape)}: {channels} channels as {layout.upper()} "
            "(1 or 3 expected; is --layout right?)"
        )
    if shape[0] not in (None, 1):
        raise ModelRefused(
            f"input '{name}' has shape {_shown(shape)}: its batch dimension is fixed at "
            f"{shape[0]}; export the model with a free batch dimension"
        )
    return layout, height, width, channels


def check_preprocessing(source: SourceModel, pre: Preprocessing, channels: int) -> None:
    if (pre.mean is None) != (pre.std is None):
        raise ModelRefused("--mean and --std go together")
    for option, values in (("--mean", pre.mean), ("--std", pre.std)):
        if values is not None and len(values) not in (1, channels):
            raise ModelRefused(
                f"{option} has {len(values)} values; the model's input has {channels} channel(s)"
            )
    if pre.std is not None and any(value == 0 for value in pre.std):
        raise ModelRefused("--std holds a zero")
    if pre.scale is not None and (not np.isfinite(pre.scale) or pre.scale <= 0):
        raise ModelRefused(f"--scale {pre.scale} is not a positive number")
    if source.input_dtype == np.uint8 and (
        pre.scale is not None or pre.mean is not None or pre.layout == "nchw"
    ):
        raise ModelRefused(
            f"input '{source.input_name}' is uint8 already: it takes pixels as they are, so "
            "--scale, --mean/--std and --layout nchw do not apply"
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def check_output(
    source: SourceModel, outputs: np.ndarray, class_names: list[str], pre: Preprocessing
) -> None:
    """ModelRefused unless the output is ``[batch, classes]`` probabilities (after --softmax)."""
    name = source.output_name
    if outputs.ndim != 2:
        raise ModelRefused(
            f"output '{name}' has shape {_shown([None, *outputs.shape[1:]])}: a classifier "
            "answers [batch, classes]"
        )
    if outputs.shape[1] != len(class_names):
        raise ModelRefused(
            f"output '{name}' has {outputs.shape[1]} classes, --class-names names "
            f"{len(class_names)}"
        )
    if not np.all(np.isfinite(outputs)):
        raise ModelRefused(f"output '{name}' holds NaN or infinite values on the parity inputs")
    if pre.softmax:
        return
    sums = outputs.astype(np.float64).sum(axis=1)
    low, high = float(outputs.min()), float(outputs.max())
    if (
        np.abs(sums - 1).max() > PROBABILITY_TOLERANCE
        or low < -PROBABILITY_TOLERANCE
        or high > 1 + PROBABILITY_TOLERANCE
    ):
        raise ModelRefused(
            f"output '{name}' is not a probability vector (rows sum to {sums.min():.3g} to "
            f"{sums.max():.3g}, values {low:.3g} to {high:.3g}): end the model with a softmax, "
            "or pass --softmax to add one"
        )


# --- parity inputs ---------------------------------------------------------------------------------


def parity_inputs(
    images_dir: Path | None, height: int, width: int, channels: int, seed: int
) -> tuple[np.ndarray, str]:
    """uint8 NHWC images for the parity gate, and a line saying where they came from: the images
    under ``images_dir`` (resized to the input, at most MAX_PARITY_IMAGES), topped up with
    generated pixels over 0-255 up to MIN_PARITY_IMAGES."""
    rng = np.random.default_rng(seed)
    arrays: list[np.ndarray] = []
    if images_dir is not None:
        if not images_dir.is_dir():
            raise ModelRefused(f"--images {images_dir} is not a directory")
        files = sorted(
            p for p in images_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise ModelRefused(f"--images {images_dir} holds no PNG or JPEG images")
        for file in files[:MAX_PARITY_IMAGES]:
            try:
                arrays.append(read_image(file, height, width, channels))
            except OSError as error:
                raise ModelRefused(f"--images: cannot read {file}: {_first_line(error)}") from None
    given = len(arrays)
    generated = max(0, MIN_PARITY_IMAGES - given)
    parts = [np.stack(arrays)] if arrays else []
    if generated:
        parts.append(rng.integers(0, 256, (generated, height, width, channels), dtype=np.uint8))
    where = []
    if given:
        where.append(f"{given} images from {images_dir}")
    if generated:
        where.append(f"{generated} generated images (uniform pixels 0-255, seed {seed})")
    return np.concatenate(parts), " + ".join(where)


# --- the exported graphs ----------------------------------------------------------------------------


def _tf_preprocess(pre: Preprocessing, dtype: Any) -> Callable[[Any], Any]:
    import tensorflow as tf

    def apply(image: Any) -> Any:
        x = tf.cast(image, tf.float32)
        if pre.scale is not None:
            x = x * tf.constant(pre.scale, tf.float32)
        if pre.mean is not None and pre.std is not None:
            x = (x - tf.constant(pre.mean, tf.float32)) / tf.constant(pre.std, tf.float32)
        if pre.layout == "nchw":
            x = tf.transpose(x, [0, 3, 1, 2])
        return tf.cast(x, dtype)

    return apply


def _tf_postprocess(pre: Preprocessing) -> Callable[[Any], Any]:
    import tensorflow as tf

    def apply(y: Any) -> Any:
        y = tf.cast(y, tf.float32)
        return tf.nn.softmax(y, axis=-1) if pre.softmax else y

    return apply


def saved_model_writer(
    source: SourceModel, pre: Preprocessing, image_shape: list[int | None]
) -> Callable[[Any, Path], None]:
    """A ``stage_version`` writer: the SavedModel with signature ``image`` (uint8 NHWC) ->
    ``probabilities``, the preprocessing in front of the user's model."""
    import tensorflow as tf

    spec = tf.TensorSpec(image_shape, tf.uint8, name=INPUT_NAME)
    before = _tf_preprocess(pre, tf.as_dtype(source.input_dtype))
    after = _tf_postprocess(pre)

    def write_keras(model: Any, path: Path) -> None:
        import keras

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            name="serving_default",
            fn=lambda image: {OUTPUT_NAME: after(model(before(image), training=False))},
            input_signature=[spec],
        )
        archive.write_out(str(path), verbose=False)

    def write_saved_model(loaded: Any, path: Path) -> None:
        function = loaded.signatures[source.signature_key]
        module = tf.Module()
        module.source = loaded

        @tf.function(input_signature=[spec])
        def serve(image: Any) -> dict[str, Any]:
            outputs = function(**{source.input_name: before(image)})
            return {OUTPUT_NAME: after(outputs[source.output_name])}

        module.serve = serve
        tf.saved_model.save(module, str(path), signatures={"serving_default": serve})

    return write_keras if source.kind == "keras" else write_saved_model


def _rename_tensor(graph: Any, old: str, new: str) -> None:
    """Rename a tensor wherever a node of ``graph`` or of its subgraphs reads or writes it."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
        for attribute in node.attribute:
            if attribute.HasField("g"):
                _rename_tensor(attribute.g, old, new)
            for subgraph in attribute.graphs:
                _rename_tensor(subgraph, old, new)
    for value_info in graph.value_info:
        if value_info.name == old:
            value_info.name = new


def wrap_onnx(
    source: SourceModel, pre: Preprocessing, height: int, width: int, channels: int, classes: int,
    keep_input: bool = False,
) -> Any:  # fmt: skip
    """The user's ONNX graph behind the preprocessing: ``image`` uint8 [batch, H, W, C] in,
    ``probabilities`` float32 [batch, classes] out (softmax appended with --softmax). With
    ``keep_input`` the model's own input stays as it is (``--keep-float-input``): only the
    output is named ``probabilities`` (and the softmax appended)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = copy.deepcopy(source.handle)
    graph = model.graph
    taken = {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {init.name for init in graph.initializer} | {i.name for i in graph.input}

    def fresh(base: str) -> str:
        name, n = base, 0
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        return name

    model_input = source.input_name
    if model_input == INPUT_NAME and not keep_input:  # the graph reads its own "image": rename it
        model_input = fresh("source_image")
        _rename_tensor(graph, INPUT_NAME, model_input)
    model_output = source.output_name
    if model_output == OUTPUT_NAME:
        model_output = fresh("source_probabilities")
        _rename_tensor(graph, OUTPUT_NAME, model_output)

    nodes: list[Any] = []
    initializers: list[Any] = []
    if keep_input:  # the model reads its own input: nothing goes in front of it
        pass
    elif source.input_dtype == np.uint8:  # pixels as they are (check_preprocessing saw to it)
        nodes.append(helper.make_node("Identity", [INPUT_NAME], [model_input]))
    else:
        x = fresh("pre_float")
        nodes.append(helper.make_node("Cast", [INPUT_NAME], [x], to=TensorProto.FLOAT))
        if pre.scale is not None:
            constant, scaled = fresh("pre_scale_value"), fresh("pre_scaled")
            initializers.append(numpy_helper.from_array(np.array(pre.scale, np.float32), constant))
            nodes.append(helper.make_node("Mul", [x, constant], [scaled]))
            x = scaled
        if pre.mean is not None and pre.std is not None:
            mean, std = fresh("pre_mean_value"), fresh("pre_std_value")
            centred, normalised = fresh("pre_centred"), fresh("pre_normalised")
            initializers.append(numpy_helper.from_array(np.asarray(pre.mean, np.float32), mean))
            initializers.append(numpy_helper.from_array(np.asarray(pre.std, np.float32), std))
            nodes.append(helper.make_node("Sub", [x, mean], [centred]))
            nodes.append(helper.make_node("Div", [centred, std], [normalised]))
            x = normalised
        if pre.layout == "nchw":
            transposed = fresh("pre_nchw")
            nodes.append(helper.make_node("Transpose", [x], [transposed], perm=[0, 3, 1, 2]))
            x = transposed
        elem_type = helper.np_dtype_to_tensor_dtype(source.input_dtype)
        if elem_type == TensorProto.FLOAT:
            nodes.append(helper.make_node("Identity", [x], [model_input]))
        else:
            nodes.append(helper.make_node("Cast", [x], [model_input], to=elem_type))

    tail = []
    y = model_output
    output_type = graph.output[0].type.tensor_type.elem_type
    if output_type != TensorProto.FLOAT:
        as_float = fresh("post_float")
        tail.append(helper.make_node("Cast", [y], [as_float], to=TensorProto.FLOAT))
        y = as_float
    if pre.softmax:
        tail.append(helper.make_node("Softmax", [y], [OUTPUT_NAME], axis=1))
    else:
        tail.append(helper.make_node("Identity", [y], [OUTPUT_NAME]))

    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *old_nodes, *tail])
    graph.initializer.extend(initializers)
    # The old shapes may pin a batch of 1; ONNX Runtime infers them again.
    del graph.value_info[:]
    kept_inputs = [i for i in graph.input if i.name != source.input_name]
    first = [i for i in graph.input if i.name == source.input_name]
    if not keep_input:
        first = [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.UINT8, ["batch", height, width, channels]
            )
        ]
    else:  # the model's own input, its batch dimension freed (as the uint8 one above)
        dims = first[0].type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    del graph.input[:]
    graph.input.extend([*first, *kept_inputs])
    del graph.output[:]
    graph.output.extend(
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", classes])]
    )
    onnx.checker.check_model(model)
    return model


def _check_onnx_batches(
    path: Path, height: int, width: int, channels: int, source: SourceModel,
    keep_input: bool = False,
) -> None:  # fmt: skip
    """ModelRefused when the exported graph cannot answer a batch of 3 (a graph traced with a
    batch of 1 often reshapes to it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name, batch = INPUT_NAME, np.zeros((3, height, width, channels), np.uint8)
    if keep_input:
        shape = [3, *(d or 1 for d in source.input_shape[1:])]
        name, batch = source.input_name, np.zeros(shape, source.input_dtype)
    try:
        (result,) = session.run([OUTPUT_NAME], {name: batch})
    except Exception as error:
        raise ModelRefused(
            f"the model fails on a batch of 3 images ({_first_line(error)[:160]}); export it "
            f"with a free batch dimension on input '{source.input_name}'"
        ) from None
    if result.shape[0] != 3:
        raise ModelRefused(
            f"the model answers {result.shape[0]} rows for a batch of 3 images; export it "
            f"with a free batch dimension on input '{source.input_name}'"
        )


def stage_onnx(
    source: SourceModel, pre: Preprocessing, geometry: tuple[int, int, int], classes: int,
    model_dir: Path, fp16: bool, keep_input: bool = False,
) -> Path:  # fmt: skip
    """The staging directory of an ONNX source: model.onnx (+ model.fp16.onnx), no SavedModel."""
    import uuid

    import onnx

    from training.export import convert_to_fp16

    height, width, channels = geometry
    wrapped = wrap_onnx(source, pre, height, width, channels, classes, keep_input)
    staging = model_dir / f".staging-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        onnx.save(wrapped, str(staging / "model.onnx"))
        _check_onnx_batches(staging / "model.onnx", height, width, channels, source, keep_input)
        if fp16:
            convert_to_fp16(staging / "model.onnx", staging / "model.fp16.onnx")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


# --- the command -----------------------------------------------------------------------------------


@dataclass
class OwnModelOptions:
    """``python -m training export --from ...``'s arguments."""

    source: Path
    name: str
    class_names: str
    repository: Path
    scale: float | None = None
    mean: str | None = None
    std: str | None = None
    layout: str | None = None
    softmax: bool = False
    images: Path | None = None
    version: int | None = None
    seed: int = 42
    fp16: bool = True
    serving_base_path: str = "/models"
    keep_float_input: bool = False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


def declared_preprocessing(
    source: SourceModel, pre: Preprocessing, geometry: tuple[int, int, int]
) -> dict[str, Any]:
    """metadata.json's ``preprocessing`` for ``--keep-float-input``: how uint8 pixels become the
    model's own input, in the form ``clients.preprocessing`` reads (and checks, here too)."""
    from clients.preprocessing import DeclaredPreprocessing

    height, width, channels = geometry
    declared = DeclaredPreprocessing(
        input=source.input_name, dtype=str(source.input_dtype), layout=pre.layout.upper(),
        height=height, width=width, channels=channels, scale=pre.scale, mean=pre.mean,
        std=pre.std,
    )  # fmt: skip
    form = declared.to_json()
    assert DeclaredPreprocessing.from_metadata(form) == declared
    return form


def check_keep_float_input(source: SourceModel) -> None:
    if source.kind != "onnx":
        raise ModelRefused(
            f"--keep-float-input takes an ONNX model; a {SOURCE_NAMES[source.kind]} gets its "
            "preprocessing inside the exported graph (leave the option out)"
        )
    if source.input_dtype == np.uint8:
        raise ModelRefused(
            f"input '{source.input_name}' is uint8 already: --keep-float-input is for a model "
            "whose input is float"
        )


def export_own_model(options: OwnModelOptions) -> tuple[Path, dict[str, Any]]:
    """Check, stage, gate and publish the user's model; ModelRefused (nothing written) when it
    cannot be exported as asked, ParityError when an exported file disagrees with it."""
    name = check_name(options.name)
    class_names = parse_class_names(options.class_names)
    pre_values = {
        "mean": parse_floats("--mean", options.mean),
        "std": parse_floats("--std", options.std),
    }
    source = load_source(options.source)
    keep = options.keep_float_input
    if keep:
        check_keep_float_input(source)
    layout, height, width, channels = image_geometry(source, options.layout)
    pre = Preprocessing(
        scale=options.scale, mean=pre_values["mean"], std=pre_values["std"], layout=layout,
        softmax=options.softmax,
    )  # fmt: skip
    check_preprocessing(source, pre, channels)
    images, images_from = parity_inputs(options.images, height, width, channels, options.seed)
    try:
        raw = source.predict(pre.apply(images, source.input_dtype))
    except Exception as error:
        raise ModelRefused(
            f"the model fails on {_shown(list(pre.apply(images[:1], source.input_dtype).shape))} "
            f"inputs: {_first_line(error)}"
        ) from None
    check_output(source, raw, class_names, pre)
    reference = softmax(raw) if pre.softmax else raw.astype(np.float32)

    repository = Path(options.repository)
    model_dir = repository / name
    if options.version is not None and (model_dir / str(options.version)).exists():
        raise ModelRefused(
            f"{model_dir / str(options.version)} already exists; versions are immutable"
        )
    created = [p for p in (repository, model_dir) if not p.exists()]
    declared: dict[str, Any] = {}
    exported_inputs = None
    if keep:  # the exported graph takes what the user's model takes; the gate feeds it that
        images = pre.apply(images, source.input_dtype)
        declared = declared_preprocessing(source, pre, (height, width, channels))
        exported_inputs = [{
            "name": source.input_name, "dtype": str(source.input_dtype),
            "shape": [-1, *(int(d or -1) for d in source.input_shape[1:])],
        }]  # fmt: skip
    request = ExportRequest(
        model_name=name, dataset=None, class_names=class_names, parity_images=images,
        seed=options.seed, fp16=options.fp16, input_shape=(-1, height, width, channels),
        inputs=exported_inputs,
        preprocessing={
            **declared,
            "source_input": {
                "name": source.input_name, "dtype": str(source.input_dtype),
                "shape": [-1 if d is None else d for d in source.input_shape],
            },
            "model_input": pre.describe(),
        },
        source={
            "kind": source.kind, "path": str(options.source), "sha256": _sha256(options.source),
            "output": source.output_name, "parity_inputs": images_from,
        },
        note=f"brought by the user: {source.kind} {options.source.name}",
    )  # fmt: skip
    try:
        if source.kind == "onnx":
            staging = stage_onnx(
                source, pre, (height, width, channels), len(class_names), model_dir, options.fp16,
                keep,
            )  # fmt: skip
        else:
            writer = saved_model_writer(source, pre, [None, height, width, channels])
            staging = stage_version(source.handle, request, repository, writer=writer)
        target, metadata = gate_and_publish(
            source.handle, request, staging, options.version,
            reference=reference, reference_name=f"the {SOURCE_NAMES[source.kind]} given ({options.source.name})",
        )  # fmt: skip
    except BaseException:
        remove_if_empty(created)
        raise
    write_repository_configs(repository, options.serving_base_path)
    return target, metadata
