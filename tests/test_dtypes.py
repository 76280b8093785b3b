"""Every dtype numpy, ml_dtypes, TensorFlow and Keras offer: stored bit-exact, or refused at commit.

What commits must read back bit for bit (checkout, merge, diff, verify, plain h5py); what the store
could not read back is refused before anything is written, with a sentence saying what to do.
"""

from __future__ import annotations

import h5py
import ml_dtypes
import numpy as np
import pytest

from mvc_magics.core.manifest import NUMPY_TENSOR_DTYPES
from mvc_magics.errors import UnsupportedModelError

ML_DTYPES = sorted(n for n in dir(ml_dtypes) if not n.startswith("_") and n not in ("finfo", "iinfo")
                   and isinstance(getattr(ml_dtypes, n), type))
# numpy's scalar types that are numbers but not portable (extended precision): refused.
NUMPY_REFUSED = sorted({np.dtype(t).name for t in set(np.sctypeDict.values())
                        if np.dtype(t).kind in "fc" and np.dtype(t).name not in NUMPY_TENSOR_DTYPES
                        and np.dtype(t).name not in ML_DTYPES})


def framework_dtypes() -> set[str]:
    """Every dtype name TensorFlow and Keras offer that has a numpy equivalent."""
    tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed")
    from keras.src.backend.common import dtypes as keras_dtypes

    names = set()
    for attr in dir(tf.dtypes) + dir(tf):
        dtype = getattr(tf, attr, None)
        if isinstance(dtype, tf.dtypes.DType):
            try:
                names.add(np.dtype(dtype.as_numpy_dtype).name)
            except (KeyError, TypeError, NotImplementedError):  # resource, variant: no numpy form
                continue
    names |= {n for n in keras_dtypes.ALLOWED_DTYPES if n != "string"}
    return names


def random_tensor(dtype: np.dtype, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random bits of ``dtype`` (every bit pattern, NaNs included), or 0/1 for bool."""
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    raw = rng.integers(0, 256, int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    if dtype.name in ("int4", "uint4", "int2", "uint2", "int1", "uint1", "float4_e2m1fn",
                      "float6_e2m3fn", "float6_e3m2fn"):
        bits = {"int4": 4, "uint4": 4, "int2": 2, "uint2": 2, "int1": 1, "uint1": 1, "float4_e2m1fn": 4,
                "float6_e2m3fn": 6, "float6_e3m2fn": 6}[dtype.name]
        raw &= (1 << bits) - 1  # sub-byte types use the low bits of each byte
        if dtype.name.startswith("int"):  # sign-extended, as ml_dtypes writes them
            raw = np.where(raw & (1 << (bits - 1)), raw | (0xFF << bits) & 0xFF, raw).astype(np.uint8)
    return raw.view(dtype).reshape(shape)


def storable() -> list[str]:
    return sorted(NUMPY_TENSOR_DTYPES) + ML_DTYPES


def bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).tobytes()


def test_every_framework_dtype_is_in_the_matrix():
    """Nothing TensorFlow or Keras offers escapes the matrix below: storable, or explicitly refused."""
    refused = {"object", "void8", "void16", "void32"}  # tf.string, the quantized qint/quint types
    assert framework_dtypes() - set(storable()) <= refused


def test_every_storable_dtype_round_trips_bit_exact(repo):
    """Small (stored as they are) and large, compressible (coded) tensors of every dtype."""
    model = {}
    for i, name in enumerate(storable()):
        dtype = np.dtype(getattr(ml_dtypes, name)) if name in ML_DTYPES else np.dtype(name)
        model[f"small/{name}"] = random_tensor(dtype, (3, 4), i)
        model[f"large/{name}"] = np.repeat(random_tensor(dtype, (64, 1), i), 128, axis=1)
    version = repo.commit(model, "all")
    target = {k: np.zeros_like(v) for k, v in model.items()}
    repo.checkout(version.id, target)
    for key, array in model.items():
        assert target[key].dtype == array.dtype, key
        assert bits(target[key]) == bits(array), key
    assert repo.verify().ok
    # Plain h5py: a tensor stored as it is and not native to HDF5 is its raw bytes + its dtype name.
    entries = {e.name: e for e in repo.manifest(version.id)}
    entry = entries["small/bfloat16"]
    with h5py.File(repo.store.layout.snapshot_path(entry.object), "r") as f:
        dataset = f["tensors"][entry.hash]
        assert dataset.attrs["mvc_dtype"] == b"bfloat16" and dataset.dtype == np.uint8
        raw = dataset[()]
    assert bits(raw.view(ml_dtypes.bfloat16).reshape(entry.shape)) == bits(model["small/bfloat16"])


@pytest.mark.parametrize("name", ["bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1fn",
                                  "float32", "complex64"])
def test_low_precision_floats_average_in_float64_and_keep_their_dtype(repo, name):
    dtype = np.dtype(getattr(ml_dtypes, name, None) or name)
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((8, 8)) for _ in range(3)]
    if dtype.kind == "c":
        values = [v + 1j * rng.standard_normal((8, 8)) for v in values]
    inputs = [{"w": v.astype(dtype)} for v in values]
    ids = [repo.commit(m, "m").id for m in inputs]
    merged = repo.merge(ids, name="m")
    result = repo.load_state(merged)["w"]
    wide = np.complex128 if dtype.kind == "c" else np.float64
    expected = np.mean([m["w"].astype(wide) for m in inputs], axis=0).astype(dtype)
    assert result.dtype == dtype and bits(result) == bits(expected)
    diff = repo.diff(ids[0], ids[1])
    assert diff.tensors[0].status == "changed" and diff.tensors[0].relative_l2 > 0


@pytest.mark.parametrize("name", [*NUMPY_REFUSED, "str", "object", "datetime64[s]", "qint8"])
def test_dtypes_the_store_cannot_read_back_are_refused_at_commit(repo, name):
    if name == "qint8":
        dtype = np.dtype([("qint8", "i1")])  # TensorFlow's quantized int8
    else:
        dtype = np.dtype(name)
    array = np.zeros((2,), dtype)
    with pytest.raises(UnsupportedModelError, match=r"does not store .*Convert the variable"):
        repo.commit({"ok": np.zeros(2, np.float32), "bad": array}, "m")
    assert repo.log() == []


def _tensorflow_variables(tf, seed: int = 0) -> dict[str, object]:
    """A tf.Variable of every TensorFlow dtype that has a storable numpy form, random bits each."""
    made = {}
    for attr in sorted(dir(tf)):
        dtype = getattr(tf, attr, None)
        if not isinstance(dtype, tf.dtypes.DType) or attr != dtype.name:  # skip aliases (half, double)
            continue
        try:
            numpy_dtype = np.dtype(dtype.as_numpy_dtype)
        except (KeyError, TypeError, NotImplementedError):  # resource, variant
            continue
        if numpy_dtype.name in storable():
            made[dtype.name] = tf.Variable(random_tensor(numpy_dtype, (2, 3), seed + len(made)), dtype=dtype)
    return made


def test_tensorflow_and_keras_variables_of_every_dtype_read_back_bit_exact(repo):
    """The frameworks' own variables: a tf.Module holding one tf.Variable per TensorFlow dtype, and a
    Keras 3 model with one weight per Keras dtype; each is perturbed, then checked out in place."""
    tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed")
    import keras
    from keras.src.backend.common import dtypes as keras_dtypes

    module = tf.Module()
    module.variables_by_dtype = _tensorflow_variables(tf)
    assert {"bfloat16", "float16", "bool", "int8", "uint64", "complex128"} <= set(module.variables_by_dtype)

    def numpy_dtype(name: str) -> np.dtype:
        return np.dtype(getattr(ml_dtypes, name)) if name in ML_DTYPES else np.dtype(name)

    class Weights(keras.Model):
        def __init__(self):
            super().__init__()
            self.made = {}
            for i, name in enumerate(sorted(set(keras_dtypes.ALLOWED_DTYPES) - {"string"})):
                value = random_tensor(numpy_dtype(name), (2, 3), 100 + i)
                self.made[name] = self.add_weight(shape=(2, 3), dtype=name, trainable=False, name=f"w_{name}",
                                                  initializer=lambda shape, dtype, value=value: value)

    model = Weights()
    assert {"float8_e4m3fn", "float8_e5m2", "bfloat16"} <= set(model.made)
    for holder, variables in ((module, module.variables_by_dtype), (model, model.made)):
        version = repo.commit(holder, f"{type(holder).__name__.lower()}")
        before = {name: bits(v.numpy()) for name, v in variables.items()}
        for i, (name, variable) in enumerate(variables.items()):  # other random bits in every variable
            variable.assign(random_tensor(numpy_dtype(name), (2, 3), 500 + i))
        repo.checkout(version.id, holder)
        assert {name: bits(v.numpy()) for name, v in variables.items()} == before
        assert "bfloat16" in {e.dtype for e in repo.manifest(version.id)}
    assert repo.verify().ok
