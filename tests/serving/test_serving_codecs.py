"""TF Serving JSON decoding: the fast path for regular nested lists against numpy's exact path."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pytest

from serving.codecs import tfserving
from serving.errors import InvalidArgument
from serving.runtimes.base import TensorSpec

REGULAR = [[[[1], [2], [3]], [[4], [5], [6]]]]  # one instance of shape [2, 3, 1]
BATCHES: dict[str, Any] = {
    "one instance": REGULAR,
    "three instances": REGULAR * 3,
    "float": [[[[1.5], [2], [3]], [[4], [5], [6]]]],
    "bools and ints": [[[[True], [False], [True]], [[1], [0], [1]]]],
    "negative": [[[[-1], [2], [3]], [[4], [5], [6]]]],
    "out of uint8 range": [[[[300], [2], [3]], [[4], [5], [6]]]],
    "ragged, same count": [[[[1], [2]], [[3], [4], [5], [6]]]],
    "ragged, more numbers": [[[[1], [2], [3]], [[4], [5], [6], [7]]]],
    "strings": [[[["a"], ["b"], ["c"]], [["d"], ["e"], ["f"]]]],
    "two-letter strings": [[[["ab"], "cd", "ef"], [[4], [5], [6]]]],
    "object at a leaf": [[[[{"x": 1}], [2], [3]], [[4], [5], [6]]]],
    "null at a leaf": [[[[None], [2], [3]], [[4], [5], [6]]]],
    "list at a leaf": [[[[[1]], [2], [3]], [[4], [5], [6]]]],
    "number where a list belongs": [[[1, [2], [3]], [[4], [5], [6]]]],
    "number as an instance": [REGULAR[0], 7],
    "object as an instance": [{"a": [1, 2, 3], "b": [4, 5, 6]}],
    "wrong instance shape": [[[1, 2, 3], [4, 5, 6]]],
}


def _decode(value: Any, spec: TensorSpec) -> tuple[str, Any]:
    try:
        return "ok", tfserving.to_array(value, spec, batch=True)
    except InvalidArgument as exc:
        return "error", exc.message


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32, np.bool_])
@pytest.mark.parametrize("name", list(BATCHES))
def test_regular_batch_fast_path_answers_exactly_like_numpy(
    name: str, dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = TensorSpec("x", np.dtype(dtype), (-1, 2, 3, 1))
    fast = _decode(BATCHES[name], spec)
    monkeypatch.setattr(tfserving, "_regular_batch", lambda value, shape: None)
    exact = _decode(BATCHES[name], spec)
    assert fast[0] == exact[0], (fast, exact)
    if fast[0] == "ok":
        assert fast[1].dtype == exact[1].dtype and fast[1].shape == exact[1].shape
        np.testing.assert_array_equal(fast[1], exact[1])
    else:
        assert fast[1] == exact[1]


def test_the_fast_path_is_taken_for_a_regular_batch() -> None:
    assert tfserving._regular_batch(REGULAR * 2, (2, 3, 1)).shape == (2, 2, 3, 1)
    assert tfserving._regular_batch(REGULAR, (-1, 3, 1)) is None  # a free dimension: numpy decides


def test_json_decoding_leaves_the_garbage_collector_as_it_found_it() -> None:
    spec = TensorSpec("x", np.dtype(np.uint8), (-1, 2, 3, 1))
    assert gc.isenabled()
    tfserving.decode_predict(b'{"instances": [[[[1], [2], [3]], [[4], [5], [6]]]]}', [spec])
    assert gc.isenabled()
    with pytest.raises(InvalidArgument):
        tfserving.decode_predict(b'{"instances": ', [spec])
    assert gc.isenabled()
    gc.disable()
    try:
        tfserving.decode_predict(b'{"instances": [[[[1], [2], [3]], [[4], [5], [6]]]]}', [spec])
        assert not gc.isenabled()  # a caller's own pause is kept
    finally:
        gc.enable()
