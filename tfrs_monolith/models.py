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
"""Implements `Model`: `tfrs.Model` plus collisionless-table maintenance."""

from typing import List

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrs_monolith import embedding

__all__ = ["Model", "find_tables", "bind_optimizer"]


def find_tables(
    model: tf.Module) -> List[embedding.CollisionlessEmbedding]:
  """All `CollisionlessEmbedding` layers inside `model`, in tracking order
  (a sharded table once, not its shards)."""
  tables = [
      module for module in model.submodules
      if isinstance(module, embedding.CollisionlessEmbedding)
  ]
  shards = {id(shard) for table in tables for shard in table._shards}  # pylint: disable=protected-access
  return [table for table in tables if id(table) not in shards]


def bind_optimizer(model: tf.keras.Model, optimizer=None):
  """Binds `optimizer` (default `model.optimizer`) to every table in `model`.

  Bound tables reset the optimizer state of rows they reuse. The optimizer is
  built on the model's trainable variables first, so that its per-row state
  exists when the training step is traced.
  """
  optimizer = optimizer or model.optimizer
  tables = find_tables(model)
  if tables and optimizer is not None:
    if hasattr(optimizer, "build") and not getattr(optimizer, "_built", True):
      optimizer.build(model.trainable_variables)
    for table in tables:
      table.bind_optimizer(optimizer)
  return tables


class Model(tfrs.models.Model):
  """A `tfrs.Model` whose `CollisionlessEmbedding` tables learn in `fit`.

  Subclass it exactly like `tfrs.Model` (implement `compute_loss`). On top,
  its training step

  * runs inside `tfrs_monolith.embedding.learning()`, so tables called
    without a `training` argument still admit and insert ids;
  * binds the compiled optimizer to every table, so rows reused after
    eviction start with fresh optimizer state.
  """

  def train_step(self, inputs):
    bind_optimizer(self)
    with embedding.learning():
      return super().train_step(inputs)
