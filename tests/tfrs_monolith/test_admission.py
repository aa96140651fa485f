"""Tests for `tfrs_monolith.CountMinSketch`."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import tfrs_monolith as tm


def test_exact_when_wide():
  sketch = tm.CountMinSketch(width=1 << 16)
  np.testing.assert_array_equal(
      sketch.add(tf.constant([5, 9], tf.int64), [2, 1]).numpy(), [2, 1])
  np.testing.assert_array_equal(
      sketch.add(tf.constant([5], tf.int64)).numpy(), [3])
  np.testing.assert_array_equal(
      sketch.estimate(tf.constant([5, 9, 11], tf.int64)).numpy(), [3, 1, 0])


def test_never_underestimates_and_error_is_bounded():
  rng = np.random.default_rng(0)
  stream = rng.zipf(1.3, size=20000) % 5000
  sketch = tm.CountMinSketch(width=512, depth=4)
  for batch in np.array_split(stream, 20):
    keys, counts = np.unique(batch, return_counts=True)
    sketch.add(tf.constant(keys, tf.int64), counts)
  truth = collections.Counter(stream.tolist())
  keys = np.array(sorted(truth), np.int64)
  estimates = sketch.estimate(tf.constant(keys)).numpy()
  exact = np.array([truth[k] for k in keys.tolist()])
  assert (estimates >= exact).all()
  # Count-min bound: error <= e * N / width for most keys.
  bound = np.e * len(stream) / 512
  assert np.mean(estimates - exact <= bound) > 0.95


def test_decay():
  sketch = tm.CountMinSketch(width=64)
  sketch.add(tf.constant([1], tf.int64), [5])
  sketch.decay(0.5)
  assert sketch.estimate(tf.constant([1], tf.int64)).numpy()[0] == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"width": 0}, "width=0"),
    ({"width": 8, "depth": 0}, "depth=0"),
    ({"width": 8, "depth": 9}, "depth=9"),
])
def test_invalid_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    tm.CountMinSketch(**kwargs)
