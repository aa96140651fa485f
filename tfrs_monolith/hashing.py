# Copyright 2026 The tfrs-monolith Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""64-bit key hashing in stock TensorFlow ops, and id -> key conversion."""

import numpy as np
import tensorflow as tf

__all__ = ["mix64", "reduce_range", "shift_right_logical", "to_keys",
           "fingerprint_strings"]


def _signed(value: int) -> int:
  """Two's complement view of an unsigned 64-bit constant."""
  return value - (1 << 64) if value >= (1 << 63) else value


_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)
_LOW32 = 0xFFFFFFFF


def shift_right_logical(x: tf.Tensor, n: int) -> tf.Tensor:
  """`x >>> n` for int64 (TensorFlow's right shift is arithmetic)."""
  return tf.bitwise.bitwise_and(
      tf.bitwise.right_shift(x, tf.constant(n, tf.int64)),
      tf.constant((1 << (64 - n)) - 1, tf.int64))


def mix64(x: tf.Tensor, seed: int = 0) -> tf.Tensor:
  """SplitMix64 finaliser of `x ^ seed`: a bijection on int64 that mixes well.

  Multiplication wraps modulo 2**64 on every TensorFlow backend (CPU, GPU,
  XLA), so the result is the same wherever the graph runs.

  Args:
    x: int64 tensor.
    seed: Python int folded into `x` first; distinct seeds give independent
      hash functions.

  Returns:
    int64 tensor of the shape of `x`.
  """
  x = tf.bitwise.bitwise_xor(x, tf.constant(_signed(seed & (2**64 - 1)),
                                            tf.int64))
  x = tf.bitwise.bitwise_xor(x, shift_right_logical(x, 30)) * _M1
  x = tf.bitwise.bitwise_xor(x, shift_right_logical(x, 27)) * _M2
  return tf.bitwise.bitwise_xor(x, shift_right_logical(x, 31))


def reduce_range(h: tf.Tensor, n: int, high: bool = False) -> tf.Tensor:
  """Maps 32 bits of the hash `h` uniformly onto `[0, n)` without a modulo.

  Args:
    h: int64 hash values.
    n: range size, `1 <= n < 2**31`.
    high: use the high 32 bits of `h` instead of the low ones.

  Returns:
    int64 tensor with values in `[0, n)`.
  """
  bits = shift_right_logical(h, 32) if high else tf.bitwise.bitwise_and(
      h, tf.constant(_LOW32, tf.int64))
  return tf.bitwise.right_shift(bits * tf.constant(n, tf.int64),
                                tf.constant(32, tf.int64))


def fingerprint_strings(strings: tf.Tensor) -> tf.Tensor:
  """64-bit FarmHash fingerprints of a string tensor, as int64 of its shape."""
  flat = tf.reshape(strings, [-1])
  prints = tf.bitcast(tf.fingerprint(flat, method="farmhash64"), tf.int64)
  return tf.reshape(prints, tf.shape(strings))


def to_keys(ids, name: str = "ids") -> tf.Tensor:
  """Converts user ids (int or string, any shape) into int64 keys.

  Integer ids are widened to int64 and kept as they are; strings are
  fingerprinted to 64 bits (collisions are negligible: about n**2 / 2**65).

  Args:
    ids: a tensor, NumPy array, Python int/str or nested list of them.
    name: argument name quoted in error messages.

  Returns:
    An int64 tensor of the same shape as `ids`.

  Raises:
    TypeError: for floating point, boolean or other non-id dtypes.
  """
  if isinstance(ids, tf.RaggedTensor):
    return ids.with_flat_values(to_keys(ids.flat_values, name))
  if isinstance(ids, tf.SparseTensor):
    return tf.SparseTensor(ids.indices, to_keys(ids.values, name),
                           ids.dense_shape)
  if not tf.is_tensor(ids):
    array = np.asarray(ids)
    if array.dtype.kind in ("U", "S", "O"):
      ids = tf.constant(array.astype(object).astype(bytes)
                        if array.dtype.kind == "O" else array, tf.string)
    elif array.dtype.kind in ("i", "u"):
      if array.dtype == np.uint64 and array.size and array.max() >= 2**63:
        raise ValueError(
            f"`{name}` has uint64 values >= 2**63 that do not fit int64 keys. "
            f"Received: {name}={array.max()}")
      ids = tf.constant(array.astype(np.int64))
    else:
      raise TypeError(
          f"`{name}` must hold integer or string ids. Received: {name} with "
          f"dtype {array.dtype}: {_preview(array)}")
  dtype = ids.dtype
  if dtype == tf.string:
    return fingerprint_strings(ids)
  if dtype in (tf.int64, tf.int32, tf.int16, tf.int8, tf.uint8, tf.uint16,
               tf.uint32):
    return tf.cast(ids, tf.int64)
  preview = ""
  if tf.executing_eagerly() and hasattr(ids, "numpy"):
    preview = ": " + _preview(ids.numpy())
  raise TypeError(
      f"`{name}` must hold integer or string ids. Received: {name} with "
      f"dtype {dtype.name}{preview}")


def _preview(array: np.ndarray) -> str:
  flat = array.reshape(-1)[:5].tolist()
  return repr(flat) + ("..." if array.size > 5 else "")


def np_mix64(x, seed: int = 0) -> np.ndarray:
  """NumPy twin of `mix64`, for tests and tools outside a graph."""
  with np.errstate(over="ignore"):
    x = np.asarray(x, np.int64).view(np.uint64) ^ np.uint64(seed & (2**64 - 1))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
  return x.view(np.int64)
