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
"""SavedModel export for TF Serving, with the `apply_patch` signature.

`export_saved_model` writes one version directory (`base/<version>/`) that a
stock `tensorflow_model_server` loads:

* `serving_default`: the model's `call(features, training=False)` on the
  serving features (each a 1-D batch);
* `apply_patch`: `table` (string scalar, a table's layer name), `keys`
  (int64 [n]), `values` (float32 [n, dim]), `evicted` (int64 [m]), `full`
  (bool scalar: keys not listed are dropped) and `created_at` (int64
  seconds, 0 for now) -> `changed` (int64 rows changed);
* `embedding_rows`: `table` (string scalar) and `keys` (int64 [n]) ->
  `values` (float32 [n, dim], zeros where absent) and `present` (bool
  [n]): what the served table holds, to check a replica against the
  trainer (`tfrs_monolith.serving.ServingClient.rows`);
* `table_keys`: `table` (string scalar) -> `keys` (int64 [n]): every live
  key of the served table (a sidecar applying a snapshot patch in several
  requests drops the keys it does not list with it);
* `patch_watermark`: `table` (string scalar) -> `sequence` (int64): the
  last patch of that table the exported rows include, so that a sidecar
  with no access to the model's files knows which patches to replay;
* `assets.extra/watermark.json`: the last patch sequence number of each
  table that the exported rows include, so a sidecar replays only newer
  patches.

Only core TensorFlow ops are used (no XLA-compiled functions, no py_func).
The directory appears atomically (written aside, then renamed), so a
server polling the base path never loads a half-written version.
"""

import json
import os
import shutil
from typing import Mapping, Optional, Sequence

import tensorflow as tf

from tfrs_monolith import embedding
from tfrs_monolith import models
from tfrs_monolith import sampling

__all__ = ["export_saved_model", "WATERMARK_FILE", "MAX_IDS_PER_REQUEST",
           "MAX_ID_BYTES"]

# What one scoring request may hold, checked by the serving signature.
MAX_IDS_PER_REQUEST = 100_000
MAX_ID_BYTES = 256

WATERMARK_FILE = os.path.join("assets.extra", "watermark.json")
_NOT_SERVED = ("label", "event_time", "sample_rate")


def _serving_spec(feature_spec, serving_features):
  if serving_features is None:
    serving_features = [k for k in feature_spec if k not in _NOT_SERVED]
  spec = {}
  for name in serving_features:
    if name not in feature_spec:
      raise ValueError(f"serving feature {name!r} is not in the feature "
                       f"spec ({sorted(feature_spec)})")
    feature = feature_spec[name]
    if not isinstance(feature, tf.io.FixedLenFeature):
      raise ValueError(f"serving feature {name!r} must be a "
                       f"FixedLenFeature. Received: {feature!r}")
    spec[name] = tf.TensorSpec([None] + list(feature.shape), feature.dtype,
                               name=name)
  return spec


class _Servable(tf.Module):
  """The model plus the two signatures, as one trackable object."""

  def __init__(self, model, serving_spec, negative_sampling_rate=None,
               max_ids_per_request=None, max_id_bytes=None):
    super().__init__(name="servable")
    self.model = model
    self._max_ids = max_ids_per_request
    self._max_id_bytes = max_id_bytes
    self._rate = negative_sampling_rate
    self.tables = models.find_tables(model)
    self._names = [t.name for t in self.tables]
    self.watermark = {}
    self.serve = tf.function(self._serve, input_signature=[serving_spec],
                             autograph=False)
    self.apply_patch = tf.function(self._apply_patch, input_signature=[
        tf.TensorSpec([], tf.string, name="table"),
        tf.TensorSpec([None], tf.int64, name="keys"),
        tf.TensorSpec([None, None], tf.float32, name="values"),
        tf.TensorSpec([None], tf.int64, name="evicted"),
        tf.TensorSpec([], tf.bool, name="full"),
        tf.TensorSpec([], tf.int64, name="created_at"),
    ], autograph=False)
    self.embedding_rows = tf.function(self._embedding_rows, input_signature=[
        tf.TensorSpec([], tf.string, name="table"),
        tf.TensorSpec([None], tf.int64, name="keys"),
    ], autograph=False)
    self.patch_watermark = tf.function(self._patch_watermark, input_signature=[
        tf.TensorSpec([], tf.string, name="table")], autograph=False)
    self.table_keys = tf.function(self._table_keys, input_signature=[
        tf.TensorSpec([], tf.string, name="table")], autograph=False)

  def _table_keys(self, table):

    def branch(layer):
      return layer.live_keys

    keys = tf.switch_case(self._table_index(table),
                          [branch(t) for t in self.tables])
    return {"keys": keys}

  def _patch_watermark(self, table):
    sequences = tf.constant([int(self.watermark.get(name, 0))
                             for name in self._names], tf.int64)
    return {"sequence": tf.gather(sequences, self._table_index(table))}

  def _table_index(self, table):
    names = tf.constant(self._names)
    hits = tf.where(tf.equal(names, table))[:, 0]
    check = tf.debugging.Assert(
        tf.size(hits) == 1, ["no table named", table, "; tables:", names])
    with tf.control_dependencies([check]):
      return tf.cast(tf.reduce_min(hits), tf.int32)

  def _checked(self, features):
    """`features`, once each passed the request limits (else the request
    fails with INVALID_ARGUMENT naming the feature, its size and the
    limit)."""
    checks = []
    for name, value in sorted(features.items()):
      if self._max_ids is not None:
        size = tf.size(value, out_type=tf.int64)
        checks.append(tf.debugging.Assert(
            size <= self._max_ids,
            [f"request limit: feature {name} holds", size,
             f"values, over max_ids_per_request={self._max_ids}"]))
      if self._max_id_bytes is not None and value.dtype == tf.string:
        longest = tf.reduce_max(tf.concat(
            [tf.reshape(tf.strings.length(value), [-1]), [0]], 0))
        checks.append(tf.debugging.Assert(
            longest <= self._max_id_bytes,
            [f"request limit: feature {name} has a", longest,
             f"byte string, over max_id_bytes={self._max_id_bytes}"]))
    if not checks:
      return features
    with tf.control_dependencies(checks):
      return {k: tf.identity(v) for k, v in features.items()}

  def _serve(self, features):
    features = self._checked(features)
    outputs = self.model(features, training=False)
    outputs = (dict(outputs) if isinstance(outputs, Mapping) else
               {"outputs": outputs})
    if self._rate is not None:
      # Trained on down-sampled negatives: serve corrected logits and the
      # probabilities they give, beside the raw outputs.
      for name in list(outputs):
        corrected = sampling.correct_logits(outputs[name], self._rate)
        outputs[f"{name}_corrected"] = corrected
        outputs[f"{name}_probability"] = tf.sigmoid(corrected)
    return outputs

  def _apply_patch(self, table, keys, values, evicted, full, created_at):

    def branch(layer):
      return lambda: layer.apply_patch_tensors(keys, values, evicted, full,
                                               created_at)

    changed = tf.switch_case(self._table_index(table),
                             [branch(t) for t in self.tables])
    return {"changed": changed}

  def _embedding_rows(self, table, keys):

    def branch(layer):

      def read():
        values, present = layer.read_rows(keys)
        return tf.cast(values, tf.float32), present

      return read

    values, present = tf.switch_case(self._table_index(table),
                                      [branch(t) for t in self.tables])
    return {"values": values, "present": present}


def export_saved_model(model: tf.keras.Model,
                       path: str,
                       watermark: Optional[Mapping[str, int]] = None,
                       feature_spec: Optional[Mapping] = None,
                       serving_features: Optional[Sequence[str]] = None,
                       negative_sampling_rate: Optional[float] = None,
                       assets_extra: Optional[Mapping[str, bytes]] = None,
                       max_ids_per_request: Optional[int] = (
                           MAX_IDS_PER_REQUEST),
                       max_id_bytes: Optional[int] = MAX_ID_BYTES):
  """Writes `model` as one TF Serving version directory at `path`.

  Args:
    model: a Keras model with `tm.CollisionlessEmbedding` tables whose
      `call(features, training=False)` scores a batch of features.
    path: the version directory to create (`base/<version>`); must not
      exist.
    watermark: last patch sequence number per table included in the export;
      defaults to each table's current patch sequence.
    feature_spec: the examples' `tf.io.parse_example` spec; defaults to
      `tm.online.DEFAULT_FEATURE_SPEC`.
    serving_features: features the serving signature takes; defaults to
      the spec's features except label, event time and sample rate.
    negative_sampling_rate: if the model was trained on examples whose
      negatives were kept with this probability (`tfrs_monolith.beam.
      NegativeSample`), its outputs are taken as logits and the serving
      signature also returns `<output>_corrected` (`logit + log(rate)`) and
      `<output>_probability` (their sigmoid) for each output.
    assets_extra: more files for `assets.extra/`, `{name: bytes}`, written
      before the version appears; e.g. TF Serving's warm-up requests
      `{"tf_serving_warmup_requests": tfrs_monolith.serving.
      warmup_requests(...)}`.
    max_ids_per_request: the serving signature refuses a request with
      more values than this in any feature (INVALID_ARGUMENT, naming the
      feature and the size); None: no limit.
    max_id_bytes: ... and a string id longer than this many bytes.

  Returns:
    `path`.
  """
  if os.path.exists(path):
    raise FileExistsError(f"export path exists: {path}")
  assets_extra = dict(assets_extra or {})
  for name, data in assets_extra.items():
    if (not isinstance(name, str) or not name or os.sep in name or
        name.startswith(".") or name == os.path.basename(WATERMARK_FILE)):
      raise ValueError("`assets_extra` names must be plain file names other "
                       f"than {os.path.basename(WATERMARK_FILE)!r}. "
                       f"Received: {name!r}")
    if not isinstance(data, (bytes, bytearray)):
      raise TypeError(f"`assets_extra[{name!r}]` must be bytes. Received: "
                      f"{type(data).__name__}")
  if feature_spec is None:
    from tfrs_monolith import online  # pylint: disable=g-import-not-at-top
    feature_spec = online.DEFAULT_FEATURE_SPEC
  if negative_sampling_rate is not None:
    negative_sampling_rate = sampling.check_rate(negative_sampling_rate,
                                                 "negative_sampling_rate")
  for name, value in (("max_ids_per_request", max_ids_per_request),
                      ("max_id_bytes", max_id_bytes)):
    if value is not None and (isinstance(value, bool) or
                              not isinstance(value, int) or value < 1):
      raise ValueError(f"`{name}` must be a positive integer or None. "
                       f"Received: {name}={value!r}")
  servable = _Servable(model, _serving_spec(feature_spec, serving_features),
                       negative_sampling_rate, max_ids_per_request,
                       max_id_bytes)
  if not servable.tables:
    raise ValueError("`model` has no tm.CollisionlessEmbedding table")
  if watermark is None:
    watermark = {t.name: int(t.patch_sequence.numpy())
                 for t in servable.tables}
  servable.watermark = {str(k): int(v) for k, v in dict(watermark).items()}
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  staging = os.path.join(parent, f".{os.path.basename(path)}.tmp")
  shutil.rmtree(staging, ignore_errors=True)
  with embedding.serving_graph():     # No XLA in the served graphs.
    tf.saved_model.save(servable, staging, signatures={
        "serving_default": servable.serve.get_concrete_function(),
        "apply_patch": servable.apply_patch.get_concrete_function(),
        "embedding_rows": servable.embedding_rows.get_concrete_function(),
        "patch_watermark": servable.patch_watermark.get_concrete_function(),
        "table_keys": servable.table_keys.get_concrete_function(),
    })
  os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
  with open(os.path.join(staging, WATERMARK_FILE), "w",
            encoding="utf-8") as f:
    json.dump({"watermark": dict(watermark)}, f, sort_keys=True)
  for name, data in assets_extra.items():
    with open(os.path.join(staging, "assets.extra", name), "wb") as f:
      f.write(data)
  os.rename(staging, path)
  return path
