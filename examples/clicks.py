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
"""MovieLens-100K as a stream of impressions and clicks, and its model.

The ratings, replayed in timestamp order, become what a live service logs:

* one request per rating (`request_id` "q<k>", k its place in time order),
  showing the rated movie plus `negatives` sampled movies the user never
  rates: one impression event each, at the rating's time. Negatives are
  drawn uniformly from the movies already rated by someone at that time.
* a "click" action for every rating >= 4, `delay` seconds after the
  impression (drawn uniformly from 1 to `max_delay`).

The joiner turns these into one example per impression, labelled 1 if it
was clicked within its window. `labelled_examples` gives the same examples
directly (no joiner), for the evaluation runs that do not need the
streaming system; the real-time example checks that both agree.

`ClickModel` is the model trained on them: user and movie embeddings, an
MLP over `[user, movie, user * movie]`, binary cross-entropy on the label
(`tfrs.tasks.Ranking`), logits out. Its embedding layers are passed in, so
the same model runs with `tm.CollisionlessEmbedding` tables or with the
hashing trick (`HashedEmbedding`).
"""

import dataclasses
import json
from typing import Dict, List

import numpy as np

# Importing tfrs_monolith first selects Keras 2, which TFRS needs.
import tfrs_monolith as tm

import tensorflow as tf  # pylint: disable=g-bad-import-order
import tensorflow_recommenders as tfrs  # pylint: disable=g-bad-import-order

POSITIVE_RATING = 4
DEFAULT_NEGATIVES = 2
DEFAULT_MAX_DELAY = 240        # seconds from impression to click
JOIN_WINDOW_SECONDS = 300      # the joiner's attribution window
EMBEDDING_DIM = 16
LEARNING_RATE = 0.05


@dataclasses.dataclass
class ClickStream:
  """The replayed stream: impressions (one per shown movie) and clicks.

  Impression arrays are in time order; `request` is the index of the
  rating that produced each impression (its request id is "q<request>").
  """
  user_id: np.ndarray        # str, per impression
  item_id: np.ndarray        # str, per impression
  event_time: np.ndarray     # int64 seconds, per impression
  label: np.ndarray          # float32: 1 if clicked, per impression
  request: np.ndarray        # int64, per impression
  click_request: np.ndarray  # int64, per click
  click_item: np.ndarray     # str, per click
  click_time: np.ndarray     # int64, per click

  def __len__(self):
    return len(self.user_id)

  def features(self, index=slice(None)) -> Dict[str, np.ndarray]:
    """The examples' feature dict (what the joiner emits), for `index`."""
    return {"user_id": self.user_id[index], "item_id": self.item_id[index],
            "label": self.label[index],
            "event_time": self.event_time[index]}

  def newest(self, fraction: float) -> int:
    """Impression index where the newest `fraction` of the ratings
    (requests) starts."""
    requests = int(self.request.max()) + 1 if len(self) else 0
    return int(np.searchsorted(self.request,
                               int(round(requests * (1 - fraction)))))

  def click_range(self, start: int, stop: int):
    """`(first, stop)` indices of the clicks of the requests shown by
    impressions `[start, stop)`."""
    if stop <= start:
      return 0, 0
    return (int(np.searchsorted(self.click_request, self.request[start])),
            int(np.searchsorted(self.click_request, self.request[stop - 1],
                                side="right")))

  def impression_events(self, index) -> List[bytes]:
    """JSON `impressions` events of the impressions at `index`."""
    return [json.dumps({
        "request_id": f"q{self.request[k]}", "user_id": self.user_id[k],
        "item_id": self.item_id[k], "event_time": int(self.event_time[k]),
    }).encode("utf-8") for k in np.arange(len(self))[index]]

  def click_events(self, index) -> List[bytes]:
    """JSON `actions` events of the clicks at `index`."""
    return [json.dumps({
        "request_id": f"q{self.click_request[k]}",
        "item_id": self.click_item[k], "action": "click",
        "event_time": int(self.click_time[k]),
    }).encode("utf-8") for k in np.arange(len(self.click_request))[index]]


def click_stream(users, items, ratings, timestamps,
                 negatives: int = DEFAULT_NEGATIVES,
                 max_delay: int = DEFAULT_MAX_DELAY,
                 seed: int = 0) -> ClickStream:
  """Builds the stream from time-ordered ratings (see the module doc).

  Args:
    users, items, ratings, timestamps: equal-length arrays, oldest first
      (as `movielens.load_ratings` returns them).
    negatives: sampled unseen movies shown per rating.
    max_delay: clicks come 1 to `max_delay` seconds after the impression.
    seed: seed of the negative sampling and the delays.

  Returns:
    A `ClickStream`.
  """
  if negatives < 0:
    raise ValueError(f"`negatives` must be >= 0. Received: {negatives!r}")
  if not 1 <= max_delay <= JOIN_WINDOW_SECONDS:
    raise ValueError(f"`max_delay` must be in [1, {JOIN_WINDOW_SECONDS}] "
                     f"(the join window). Received: {max_delay!r}")
  if np.any(np.diff(timestamps) < 0):
    raise ValueError("ratings must be in time order")
  rng = np.random.default_rng(seed)
  rated = {}
  for user, item in zip(users, items):
    rated.setdefault(user, set()).add(item)
  # Movies in order of their first rating: the pool at time t is a prefix.
  _, first = np.unique(items, return_index=True)
  pool = items[np.sort(first)]
  pool_size = np.searchsorted(np.sort(first), np.arange(len(items)),
                              side="right")
  user_out, item_out, time_out, label_out, request_out = [], [], [], [], []
  for k, (user, item, rating, t) in enumerate(
      zip(users, items, ratings, timestamps)):
    shown = [item]
    tries = 0
    while len(shown) < negatives + 1 and tries < 20 * (negatives + 1):
      tries += 1
      candidate = pool[rng.integers(pool_size[k])]
      if candidate not in rated[user] and candidate not in shown:
        shown.append(candidate)
    for j, movie in enumerate(shown):
      user_out.append(user)
      item_out.append(movie)
      time_out.append(t)
      label_out.append(1.0 if j == 0 and rating >= POSITIVE_RATING else 0.0)
      request_out.append(k)
  label = np.array(label_out, np.float32)
  clicked = np.flatnonzero(label)
  event_time = np.array(time_out, np.int64)
  delays = rng.integers(1, max_delay + 1, size=len(clicked))
  return ClickStream(
      user_id=np.array(user_out, dtype=str),
      item_id=np.array(item_out, dtype=str), event_time=event_time,
      label=label, request=np.array(request_out, np.int64),
      click_request=np.array(request_out, np.int64)[clicked],
      click_item=np.array(item_out, dtype=str)[clicked],
      click_time=event_time[clicked] + delays)


# --------------------------------------------------------------------- model


class HashedEmbedding(tf.keras.layers.Layer):
  """The hashing trick: `Hashing(num_bins)` then `Embedding(num_bins)`.

  Ids sharing a bin share a row (and its updates): the collisions
  `CollisionlessEmbedding` avoids.
  """

  def __init__(self, output_dim, num_bins, seed=None, **kwargs):
    super().__init__(**kwargs)
    self.output_dim = output_dim
    self.num_bins = num_bins
    self.hashing = tf.keras.layers.Hashing(num_bins)
    self.embedding = tf.keras.layers.Embedding(
        num_bins, output_dim,
        embeddings_initializer=tf.keras.initializers.RandomUniform(
            -0.05, 0.05, seed=seed))

  def call(self, ids):
    return self.embedding(self.hashing(ids))

  def get_config(self):
    return {**super().get_config(), "output_dim": self.output_dim,
            "num_bins": self.num_bins}


def hash_bins(ids: np.ndarray, num_bins: int) -> np.ndarray:
  """The bins `HashedEmbedding(num_bins)` puts string `ids` in."""
  return tf.keras.layers.Hashing(num_bins)(tf.constant(ids)).numpy()


def collisionless(name, capacity, min_count=1, ttl_seconds=None, seed=0,
                  admission_width=None, admission_window=None):
  """A `tm.CollisionlessEmbedding` table as the click model uses it."""
  return tm.CollisionlessEmbedding(
      EMBEDDING_DIM, capacity=capacity, min_count=min_count,
      ttl_seconds=ttl_seconds, seed=seed, admission_width=admission_width,
      admission_window=admission_window, name=name)


def table_bytes(layer: tf.keras.layers.Layer) -> int:
  """Bytes of an embedding layer's variables (rows, index, counters)."""
  layer.build(None)
  return int(sum(np.prod(v.shape) * v.dtype.size for v in layer.weights))


class ClickModel(tm.Model):
  """Click-through model: embeddings -> MLP -> logit; BCE on `label`."""

  def __init__(self, user_embedding, item_embedding, seed=0):
    super().__init__()
    self.seed = seed
    self.user_embedding = user_embedding
    self.item_embedding = item_embedding
    init = tf.keras.initializers.GlorotUniform
    self.mlp = tf.keras.Sequential([
        tf.keras.layers.Dense(32, activation="relu",
                              kernel_initializer=init(seed=seed)),
        tf.keras.layers.Dense(1, kernel_initializer=init(seed=seed + 1)),
    ])
    self.task = tfrs.tasks.Ranking(
        loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")])

  def call(self, features, training=None):
    users = self.user_embedding(features["user_id"], training=training)
    items = self.item_embedding(features["item_id"], training=training)
    hidden = tf.concat([users, items, users * items], axis=-1)
    return tf.squeeze(self.mlp(hidden), axis=-1)

  def compute_loss(self, features, training=False):
    return self.task(labels=features["label"],
                     predictions=self(features, training=training))

  def get_config(self):
    # The embedding layers are objects; their own configs describe them.
    return {"seed": self.seed}


def make_model(user_capacity=1_000, item_capacity=2_000, seed=0):
  """A compiled `ClickModel` with collisionless tables named `user`,
  `item` (the real-time example's model; also `tfrs-monolith --model
  clicks:make_model`)."""
  model = ClickModel(collisionless("user", user_capacity, seed=seed),
                     collisionless("item", item_capacity, seed=seed + 1),
                     seed=seed)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(LEARNING_RATE))
  return model


# -------------------------------------------------------------------- metrics


def auc(labels, scores) -> float:
  """Area under the ROC curve (ties count one half); NaN if one class."""
  labels = np.asarray(labels) > 0.5
  scores = np.asarray(scores, np.float64)
  positives = int(labels.sum())
  negatives = len(labels) - positives
  if positives == 0 or negatives == 0:
    return float("nan")
  _, inverse, counts = np.unique(scores, return_inverse=True,
                                 return_counts=True)
  # Mid-ranks (1-based) of tied groups.
  ends = np.cumsum(counts)
  mid = ends - (counts - 1) / 2.0
  ranks = mid[inverse]
  return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) /
               (positives * negatives))
