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
"""The log-odds correction for models trained on down-sampled negatives.

When the joiner keeps each negative with probability `rate` (and every
positive), a model trained on the result sees odds `1 / rate` times too
high: its logit exceeds the true one by `-log(rate)`. Serving adds `log(rate)`
back (`tm.export.export_saved_model(..., negative_sampling_rate=rate)` does
it in the `serving_default` signature).
"""

import math

import tensorflow as tf

__all__ = ["check_rate", "correct_logits"]


def check_rate(rate, name: str = "rate") -> float:
  """`rate` as a float in (0, 1], or a ValueError naming it."""
  if isinstance(rate, bool) or not isinstance(rate, (int, float)):
    raise ValueError(f"`{name}` must be a number in (0, 1]. Received: "
                     f"{name}={rate!r}")
  rate = float(rate)
  if not (math.isfinite(rate) and 0.0 < rate <= 1.0):
    raise ValueError(f"`{name}` must be in (0, 1]. Received: {name}={rate!r}")
  return rate


def correct_logits(logits, rate) -> tf.Tensor:
  """`logits + log(rate)`: the logit the model would give without sampling.

  Args:
    logits: the model's logits (any shape, float).
    rate: the probability with which each negative was kept, a Python
      number in (0, 1] or a tensor broadcastable to `logits` (e.g. the
      examples' `sample_rate` feature).

  Returns:
    The corrected logits, of the shape and dtype of `logits`.
  """
  logits = tf.convert_to_tensor(logits)
  if not logits.dtype.is_floating:
    raise ValueError(f"`logits` must be floating point. Received dtype "
                     f"{logits.dtype.name}")
  if isinstance(rate, (int, float)):
    return logits + math.log(check_rate(rate))
  return logits + tf.math.log(tf.cast(rate, logits.dtype))
