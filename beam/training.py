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
"""Batch training: the batch store -> SavedModel version 1 + a checkpoint.

Reads the joiner's gzip TFRecord shards, trains a model with
`tm.CollisionlessEmbedding` tables, then writes

* `<export_dir>/<version>/`: a TF Serving version with `serving_default`
  and `apply_patch` (`tm.export.export_saved_model`, as the online trainer
  exports), whose watermark says it holds every row trained so far;
* a checkpoint in `checkpoint_dir` that `tm.online.OnlineTrainer` (or
  `tfrs-monolith train-online`) with the same directory starts from.

Command line: `tfrs-monolith train-batch --examples 'store/examples-*'
--model my_models:make_model --export-dir base --checkpoint-dir trainer`.
"""

import dataclasses
import os
from typing import Mapping, Optional

import tensorflow as tf

from tfrs_monolith import export as export_lib
from tfrs_monolith import models
from tfrs_monolith import online

__all__ = ["BatchTrainingResult", "read_examples", "train"]


def _store_files(file_pattern: str):
  """The shards matching a glob (or comma-separated globs), sorted."""
  files = sorted(f for pattern in file_pattern.split(",")
                 for f in tf.io.gfile.glob(pattern.strip()))
  if not files:
    raise ValueError(f"no example files match {file_pattern!r}")
  return files


def read_examples(file_pattern: str,
                  feature_spec: Optional[Mapping] = None,
                  batch_size: int = 1024,
                  shuffle_buffer: int = 0,
                  seed: Optional[int] = None,
                  shuffle_files: bool = False) -> tf.data.Dataset:
  """Batches of parsed examples from gzip TFRecord shards.

  Args:
    file_pattern: a glob of shards (or a comma-separated list of globs).
    feature_spec: `tf.io.parse_example` spec; defaults to
      `tm.online.DEFAULT_FEATURE_SPEC`.
    batch_size: examples per batch.
    shuffle_buffer: shuffle examples in a buffer of this size (0: no).
    seed: shuffle seed.
    shuffle_files: read the shards in a random order, interleaved.

  Raises:
    ValueError: if no file matches.
  """
  files = _store_files(file_pattern)
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or (
      batch_size < 1):
    raise ValueError(f"`batch_size` must be a positive int. Received: "
                     f"batch_size={batch_size!r}")
  spec = dict(feature_spec or online.DEFAULT_FEATURE_SPEC)
  if shuffle_files:
    dataset = tf.data.Dataset.from_tensor_slices(files).shuffle(
        len(files), seed=seed).interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
            cycle_length=min(len(files), 4),
            num_parallel_calls=tf.data.AUTOTUNE)
  else:
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
  if shuffle_buffer:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed)
  return (dataset.batch(batch_size)
          .map(lambda s: tf.io.parse_example(s, spec),
               num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))


@dataclasses.dataclass
class BatchTrainingResult:
  """What `train` did."""
  examples: int
  epochs: int
  final_loss: float
  export_path: Optional[str]
  checkpoint_path: Optional[str]
  table_sizes: Mapping[str, int]
  clock: int


def train(model: tf.keras.Model,
          file_pattern: str,
          *,
          epochs: int = 1,
          batch_size: int = 1024,
          feature_spec: Optional[Mapping] = None,
          time_feature: Optional[str] = "event_time",
          export_dir: Optional[str] = None,
          version: int = 1,
          checkpoint_dir: Optional[str] = None,
          negative_sampling_rate: Optional[float] = None,
          assets_extra: Optional[Mapping[str, bytes]] = None,
          shuffle_buffer: int = 0,
          seed: Optional[int] = None,
          verbose: int = 0) -> BatchTrainingResult:
  """Trains `model` on the batch store; exports and checkpoints it.

  Args:
    model: a compiled Keras model (typically a `tm.Model`) with
      `tm.CollisionlessEmbedding` tables, trained by `model.fit` on the
      parsed feature dicts.
    file_pattern: the batch store's shards (see `read_examples`).
    epochs: passes over the data.
    batch_size: examples per step.
    feature_spec: the examples' spec; defaults to
      `tm.online.DEFAULT_FEATURE_SPEC`.
    time_feature: int64 event-time feature; the tables' clocks end at its
      largest value, so expiry and the online trainer continue from the
      data's time. None leaves the clocks alone.
    export_dir: TF Serving base path; version `version` is written there.
    version: the version directory's name.
    checkpoint_dir: where the online trainer's starting checkpoint goes.
    negative_sampling_rate: passed to the export (serving-time log-odds
      correction) when negatives were down-sampled.
    assets_extra: files for the version's `assets.extra/` (e.g. TF
      Serving warm-up requests), passed to the export.
    shuffle_buffer: shuffle the examples in a buffer of this size (on a
      cluster, at least 16 batches).
    seed: shuffle seed (not used on a cluster, where each worker shuffles
      at random).
    verbose: `model.fit` verbosity.

  Returns:
    A `BatchTrainingResult`.
  """
  if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
    raise ValueError(f"`epochs` must be a positive int. Received: "
                     f"epochs={epochs!r}")
  tables = models.find_tables(model)
  if not tables:
    raise ValueError("`model` has no tm.CollisionlessEmbedding table")
  spec = dict(feature_spec or online.DEFAULT_FEATURE_SPEC)
  if time_feature is not None and time_feature not in spec:
    raise ValueError(f"`time_feature` {time_feature!r} is not in the "
                     f"feature spec ({sorted(spec)})")
  # Count the examples and find the newest event time, parsing only that
  # feature.
  examples = 0
  latest = 0
  for serialized in tf.data.TFRecordDataset(
      _store_files(file_pattern), compression_type="GZIP").batch(65536):
    examples += int(tf.size(serialized))
    if time_feature is not None:
      times = tf.io.parse_example(
          serialized, {time_feature: spec[time_feature]})[time_feature]
      latest = max(latest, int(tf.reduce_max(times)))

  if isinstance(model.distribute_strategy,
                tf.distribute.experimental.ParameterServerStrategy):
    # On a cluster, each worker reads the store itself (it must be on
    # storage every worker sees) and an epoch is a number of steps. Every
    # worker gets input_pipeline_id 0, so the store cannot be split among
    # them: each shuffles shards and examples at random instead (no seed),
    # so that they do not train on the same examples in the same order.
    def dataset_fn(input_context=None):
      del input_context
      return read_examples(file_pattern, spec, batch_size,
                           max(shuffle_buffer, 16 * batch_size), None,
                           shuffle_files=True).repeat()
    history = model.fit(
        tf.keras.utils.experimental.DatasetCreator(dataset_fn),
        epochs=epochs, steps_per_epoch=max(1, -(-examples // batch_size)),
        verbose=verbose)
  else:
    history = model.fit(
        read_examples(file_pattern, spec, batch_size, shuffle_buffer, seed),
        epochs=epochs, verbose=verbose)
  for table in tables:
    if latest > 0:
      table.advance_clock(latest)
    # Every row trained so far is in the export: the next patch starts
    # from here, and the export's watermark is this sequence number.
    table.export_patch()

  export_path = None
  if export_dir is not None:
    export_path = export_lib.export_saved_model(
        model, os.path.join(export_dir, str(version)),
        feature_spec=spec, negative_sampling_rate=negative_sampling_rate,
        assets_extra=assets_extra)
  checkpoint_path = None
  if checkpoint_dir is not None:
    checkpoint_path = online.save_initial_checkpoint(model, checkpoint_dir)
  loss = history.history.get("loss") or history.history.get("total_loss")
  return BatchTrainingResult(
      examples=examples, epochs=epochs,
      final_loss=float(loss[-1]) if loss else float("nan"),
      export_path=export_path, checkpoint_path=checkpoint_path,
      table_sizes={t.name: int(t.table.size()) for t in tables},
      clock=latest)
