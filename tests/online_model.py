"""A small TFRS ranking model for the online trainer tests (and the CLI)."""

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

import tfrs_monolith as tm


class Ranking(tm.Model):
  """User and item tables -> MLP -> score; MSE on `label`."""

  def __init__(self, dim=8, capacity=4096, item_min_count=1, ttl=None,
               reduction=tf.keras.losses.Reduction.AUTO):
    super().__init__()
    self.user = tm.CollisionlessEmbedding(dim, capacity=capacity, name="user")
    self.item = tm.CollisionlessEmbedding(
        dim, capacity=capacity, min_count=item_min_count, ttl_seconds=ttl,
        name="item")
    self.mlp = tf.keras.Sequential([
        tf.keras.layers.Dense(16, activation="relu",
                              kernel_initializer=tf.keras.initializers.
                              GlorotUniform(seed=1)),
        tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.
                              GlorotUniform(seed=2)),
    ])
    # Under a distribution strategy the loss must sum (or not reduce).
    self.task = tfrs.tasks.Ranking(
        loss=tf.keras.losses.MeanSquaredError(reduction=reduction))

  def call(self, features, training=None):
    return self.mlp(tf.concat([
        self.user(features["user_id"], training=training),
        self.item(features["item_id"], training=training)
    ], axis=1))

  def compute_loss(self, features, training=False):
    return self.task(labels=features["label"],
                     predictions=self(features, training=training)[:, 0])


def make_model():
  model = Ranking(item_min_count=2)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
  return model


def example(user, item, label, event_time):
  """One serialized example in the default schema."""
  feature = tf.train.Feature
  return tf.train.Example(features=tf.train.Features(feature={
      "user_id": feature(bytes_list=tf.train.BytesList(
          value=[str(user).encode()])),
      "item_id": feature(bytes_list=tf.train.BytesList(
          value=[str(item).encode()])),
      "label": feature(float_list=tf.train.FloatList(value=[label])),
      "event_time": feature(int64_list=tf.train.Int64List(
          value=[event_time])),
  })).SerializeToString()


def examples(n, seed=0, users=60, items=90, start=1_000):
  rng = np.random.default_rng(seed)
  return [example(int(rng.integers(users)), int(rng.integers(items)),
                  float(rng.random()), start + k) for k in range(n)]


def replica_tables(capacity=4096, dim=8):
  return {name: tm.CollisionlessEmbedding(dim, capacity=capacity, name=name)
          for name in ("user", "item")}


def apply_patch_records(records, replicas, pending=None):
  """Applies complete patches found in patch-topic records, in order."""
  pending = {} if pending is None else pending
  applied = []
  for record in records:
    patch_id, _, count, *_ = tm.EmbeddingPatch.read_chunk(record.value)
    pending.setdefault(patch_id, []).append(record.value)
    if len(pending[patch_id]) == count:
      patch = tm.EmbeddingPatch.from_chunks(pending.pop(patch_id))
      replicas[patch.table_name].apply_patch(patch)
      applied.append(patch)
  return applied


def live_rows(layer):
  """{key: vector} of every live row of a table layer."""
  rows = layer.table.live_rows()
  keys = tf.gather(layer.table.row_keys, rows).numpy()
  values = tf.gather(layer.embeddings, rows).numpy()
  return dict(zip(keys.tolist(), values))


def assert_replica_equal(trainer_layer, replica_layer):
  mine = live_rows(trainer_layer)
  theirs = live_rows(replica_layer)
  assert set(mine) == set(theirs), (
      f"{trainer_layer.name}: {len(set(mine) ^ set(theirs))} keys differ")
  for key, value in mine.items():
    np.testing.assert_array_equal(theirs[key], value)
  return len(mine)
