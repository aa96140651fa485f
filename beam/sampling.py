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
"""Negative down-sampling of joined examples."""

import hashlib
import struct
from typing import Any, Dict

import apache_beam as beam

from tfrs_monolith import sampling

__all__ = ["NegativeSample", "keep_negative"]

METRICS_NAMESPACE = "tfrs_monolith.sampling"


def keep_negative(example: Dict[str, Any], rate: float, seed: int) -> bool:
  """Whether the negative `example` is kept: a coin of bias `rate` that
  depends only on (`seed`, request id, user id, item id), so every run,
  worker and retry decides alike."""
  digest = hashlib.blake2b(
      "\x1f".join([str(seed), example["request_id"], example["user_id"],
                   example["item_id"]]).encode("utf-8"),
      digest_size=8).digest()
  return struct.unpack(">Q", digest)[0] / 2.0**64 < rate


class _SampleFn(beam.DoFn):

  def __init__(self, rate, seed):
    super().__init__()
    self._rate = rate
    self._seed = seed
    self._kept = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                              "negatives_kept")
    self._dropped = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                 "negatives_dropped")

  def process(self, example):
    if example["label"] > 0:
      yield example
    elif keep_negative(example, self._rate, self._seed):
      self._kept.inc()
      yield dict(example, sample_rate=example["sample_rate"] * self._rate)
    else:
      self._dropped.inc()


class NegativeSample(beam.PTransform):
  """Keeps every positive and each negative with probability `rate`.

  Kept negatives carry `sample_rate` multiplied by `rate`, so a model
  trained on them can be corrected at serving time with
  `tm.sampling.correct_logits(logits, rate)` (`logit + log(rate)`).

  Args:
    rate: probability of keeping a negative, in (0, 1].
    seed: the decisions are a deterministic function of the seed and the
      example's request, user and item ids.
  """

  def __init__(self, rate: float, seed: int = 0):
    super().__init__()
    self._rate = sampling.check_rate(rate)
    if isinstance(seed, bool) or not isinstance(seed, int):
      raise ValueError(f"`seed` must be an int. Received: seed={seed!r}")
    self._seed = seed

  def expand(self, examples):
    if self._rate == 1.0:
      return examples
    return examples | "SampleNegatives" >> beam.ParDo(
        _SampleFn(self._rate, self._seed))
