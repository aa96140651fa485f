"""TFRS models with `CollisionlessEmbedding`: training, saving, exported ops."""

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

import tfrs_monolith as tm
import saved_model_checks


def _interactions(n=3000, seed=0):
  """Users like items of their own group: a signal a model can learn."""
  rng = np.random.default_rng(seed)
  users = rng.integers(0, 200, n)
  items = users % 10 * 20 + rng.integers(0, 20, n)
  return {
      "user": np.char.add("u", users.astype(str)),
      "item": items.astype(np.int64),
      "rating": (users % 10 == items // 20).astype(np.float32) * 4 + 1,
  }


class Retrieval(tm.Model):

  def __init__(self):
    super().__init__()
    self.user = tm.CollisionlessEmbedding(16, capacity=512, name="user")
    self.item = tm.CollisionlessEmbedding(16, capacity=512, min_count=2,
                                          name="item")
    self.task = tfrs.tasks.Retrieval()

  def compute_loss(self, features, training=False):
    # Deliberately no `training=` forwarding, as in the TFRS tutorials.
    return self.task(self.user(features["user"]), self.item(features["item"]))


class Ranking(tfrs.Model):
  """A plain `tfrs.Model`: forwards `training` and binds the optimizer."""

  def __init__(self):
    super().__init__()
    self.user = tm.CollisionlessEmbedding(8, capacity=512, name="user",
                                          ttl_seconds=3600)
    self.item = tm.CollisionlessEmbedding(8, capacity=512, name="item")
    self.mlp = tf.keras.Sequential([
        tf.keras.layers.Dense(16, activation="relu"),
        tf.keras.layers.Dense(1)
    ])
    self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError())

  def call(self, features, training=None):
    return self.mlp(tf.concat([
        self.user(features["user"], training=training),
        self.item(features["item"], training=training)
    ], axis=1))

  def compute_loss(self, features, training=False):
    return self.task(labels=features["rating"],
                     predictions=self(features, training=training))


def _fit(model, data, epochs=4):
  dataset = tf.data.Dataset.from_tensor_slices(data).batch(256)
  history = model.fit(dataset, epochs=epochs, verbose=0)
  return history.history["loss"]


def test_retrieval_model_learns():
  model = Retrieval()
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.2))
  losses = _fit(model, _interactions())
  assert losses[-1] < 0.8 * losses[0]
  assert model.user.table.size().numpy() == 200
  assert 0 < model.item.table.size().numpy() <= 200
  # tm.Model bound the optimizer: its per-row state of both tables is found.
  assert model.user._optimizer_rows() and model.item._optimizer_rows()


def test_ranking_model_learns_and_reloads(tmp_path):
  model = Ranking()
  model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
  tm.models.bind_optimizer(model)
  data = _interactions()
  losses = _fit(model, data)
  assert losses[-1] < 0.5 * losses[0]
  features = {k: v[:64] for k, v in data.items()}
  expected = model.predict(features, verbose=0)
  model.save(str(tmp_path / "ranking"))
  loaded = tf.keras.models.load_model(str(tmp_path / "ranking"))
  np.testing.assert_array_equal(loaded.predict(features, verbose=0),
                                expected)
  # Unknown ids read the default vector: the model still answers.
  unknown = dict(features, user=np.array(["nobody"] * 64))
  assert np.isfinite(loaded.predict(unknown, verbose=0)).all()


def test_exported_graph_uses_only_core_ops(tmp_path):
  layer = tm.CollisionlessEmbedding(4, capacity=64, min_count=2,
                                    ttl_seconds=10)
  layer(tf.constant([1, 2, 1], tf.int64), training=True)

  class Exported(tf.Module):

    def __init__(self):
      super().__init__()
      self.layer = layer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def serve(self, ids):
      return {"vectors": self.layer(ids, training=False)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def learn(self, ids):
      return {"vectors": self.layer(ids, training=True)}

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 4], tf.float32),
        tf.TensorSpec([None], tf.int64)])
    def apply_patch(self, keys, values, evicted):
      return {"changed": self.layer.apply_patch_tensors(keys, values,
                                                        evicted)}

  module = Exported()
  path = str(tmp_path / "exported")
  tf.saved_model.save(module, path, signatures={
      "serving_default": module.serve, "learn": module.learn,
      "apply_patch": module.apply_patch})
  # Training probes under XLA (`jit_compile=True`); serving never does.
  ops = saved_model_checks.assert_servable(path,
                                           ("serving_default", "apply_patch"))
  assert {"ResourceGather", "While", "ResourceScatterUpdate"} <= ops
  assert any(function.attr["_XlaMustCompile"].b for function in
             saved_model_checks.functions_of_signature(path, "learn").values())
  # The exported graph serves and applies patches after loading.
  loaded = tf.saved_model.load(path)
  patch = loaded.signatures["apply_patch"](
      keys=tf.constant([7], tf.int64), values=tf.ones([1, 4]),
      evicted=tf.constant([1], tf.int64))
  assert patch["changed"].numpy() == 2
  vectors = loaded.signatures["serving_default"](
      ids=tf.constant([7, 1], tf.int64))["vectors"].numpy()
  np.testing.assert_array_equal(vectors, [[1.0] * 4, [0.0] * 4])


def test_layer_lookup_compiles_with_xla():
  layer = tm.CollisionlessEmbedding(4, capacity=64)
  layer(tf.constant([3, 4], tf.int64), training=True)
  ids = tf.constant([[3, 9], [4, 3]], tf.int64)
  xla = tf.function(lambda x: layer(x, training=False), jit_compile=True)
  np.testing.assert_array_equal(xla(ids).numpy(), layer(ids).numpy())
