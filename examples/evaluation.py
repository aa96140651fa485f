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
"""Does it pay? Three comparisons on the MovieLens click stream.

All three train the same `clicks.ClickModel` on `clicks.click_stream`
examples (impressions labelled by clicks) and measure AUC on examples the
model has not trained on yet, in time order:

1. `compare_hashing`: collisionless tables against the hashing trick at
   equal embedding memory (the hashed table gets as many rows as fit in
   the bytes of the collisionless table's variables: rows, index,
   counters), for several table sizes. Trained on the oldest 80 % of the
   ratings, evaluated on the newest 20 %: AUC, and recall@10 of ranking
   every movie for each holdout user. Reports the measured collision rates
   of the hashed tables. A collisionless table smaller than the number of
   ids admits only frequent ones, as Monolith does: `min_count` is set so
   that the ids reaching it over the training epochs fit the table.
2. `compare_online`: a model trained on the oldest half and frozen,
   against the same model trained on, after it, each time shard of the
   newer half once it has been evaluated on it (online training). AUC per
   shard and overall.
3. `compare_sync`: online training over the newest 20 %, one step per
   minute of event time, served through replicas of the model that receive
   the trainer's sparse patches (`export_patch` -> `apply_patch`) every
   1, 10 or 60 minutes, and its dense weights once a day. Each example is
   scored by every replica before the trainer learns from it. AUC of each
   replica's scores (and of the trainer's own, i.e. a sync interval of 0).

Everything is seeded; `run_all` returns plain dicts (JSON-ready).
"""

import time
from typing import Dict, Sequence

import numpy as np

import clicks

# Importing clicks first selects Keras 2, which TFRS needs.
import tensorflow as tf  # pylint: disable=g-bad-import-order

import tfrs_monolith as tm  # pylint: disable=g-bad-import-order
from tfrs_monolith import models  # pylint: disable=g-bad-import-order

HOLDOUT_FRACTION = 0.2
BATCH_SIZE = 256


def _take(features, index):
  return {name: values[index] for name, values in features.items()}


def _dataset(features, batch_size=BATCH_SIZE, seed=None):
  ds = tf.data.Dataset.from_tensor_slices(features)
  if seed is not None:
    ds = ds.shuffle(len(features["label"]), seed=seed,
                    reshuffle_each_iteration=True)
  return ds.batch(batch_size)


def train(model, features, epochs=1, seed=None, batch_size=BATCH_SIZE):
  """`model.fit` on `features`, shuffled if `seed` is given (else in time
  order)."""
  model.fit(_dataset(features, batch_size, seed), epochs=epochs, verbose=0)


def predict(model, features, batch_size=8192) -> np.ndarray:
  """Logits of `model` (no table changes) for a feature dict."""
  inputs = {"user_id": features["user_id"], "item_id": features["item_id"]}
  out = [model(_take(inputs, slice(i, i + batch_size)), training=False)
         .numpy() for i in range(0, len(inputs["user_id"]), batch_size)]
  return np.concatenate(out) if out else np.zeros([0], np.float32)


# ----------------------------------------------------- 1. collisions


def collision_rate(ids: np.ndarray, num_bins: int) -> float:
  """Share of the distinct `ids` whose hash bin holds another of them."""
  distinct = np.unique(ids)
  bins = clicks.hash_bins(distinct, num_bins)
  _, inverse, counts = np.unique(bins, return_inverse=True,
                                 return_counts=True)
  return float(np.mean(counts[inverse] > 1))


def admission_threshold(ids: np.ndarray, capacity: int) -> int:
  """The smallest count m such that the ids occurring at least m times
  in `ids` fit in `capacity` rows."""
  _, counts = np.unique(ids, return_counts=True)
  counts = np.sort(counts)[::-1]
  if len(counts) <= capacity:
    return 1
  return int(counts[capacity]) + 1


def recall_at_k(model, train_features, holdout_features, items, k=10):
  """Mean over holdout users with a click of the share of their holdout
  clicks ranked in the top `k` of all `items`, leaving out the movies they
  clicked in training."""
  positives = holdout_features["label"] > 0
  users = np.unique(holdout_features["user_id"][positives])
  if not len(users):
    return float("nan")
  seen = {}
  clicked = train_features["label"] > 0
  for user, item in zip(train_features["user_id"][clicked],
                        train_features["item_id"][clicked]):
    seen.setdefault(user, set()).add(item)
  wanted = {}
  for user, item in zip(holdout_features["user_id"][positives],
                        holdout_features["item_id"][positives]):
    wanted.setdefault(user, set()).add(item)
  scores = predict(model, {
      "user_id": np.repeat(users, len(items)),
      "item_id": np.tile(items, len(users)),
  }).reshape(len(users), len(items))
  recalls = []
  item_index = {item: i for i, item in enumerate(items)}
  for row, user in enumerate(users):
    for item in seen.get(user, ()):
      scores[row, item_index[item]] = -np.inf
    top = set(items[np.argsort(-scores[row], kind="stable")[:k]])
    recalls.append(len(top & wanted[user]) / len(wanted[user]))
  return float(np.mean(recalls))


def compare_hashing(stream: clicks.ClickStream,
                    fractions: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
                    epochs: int = 3, seed: int = 0) -> Dict:
  """Collisionless vs hashing at equal embedding memory (see module doc).

  Args:
    stream: the click stream.
    fractions: table sizes, as fractions of the distinct users and movies
      of the whole data (the collisionless tables' capacities).
    epochs: training epochs (shuffled with `seed`).
    seed: model and shuffle seed.

  Returns:
    {"rows": [per fraction and variant: "fraction", "variant",
    "user_rows", "item_rows", "bytes", "min_count", "auc", "recall@10",
    "user_collision_rate", "item_collision_rate"]}.
  """
  cut = stream.newest(HOLDOUT_FRACTION)
  features = stream.features()
  train_part = _take(features, slice(None, cut))
  holdout = _take(features, slice(cut, None))
  items = np.unique(stream.item_id)
  n_users = len(np.unique(stream.user_id))
  distinct = {"user": n_users, "item": len(items)}
  rows = []
  for fraction in fractions:
    capacity = {name: max(16, int(round(fraction * n)))
                for name, n in distinct.items()}
    # Counts add up over the epochs: a threshold of m per epoch is
    # epochs * m in all (1 when every id fits).
    min_count = {}
    for name in capacity:
      threshold = admission_threshold(train_part[f"{name}_id"],
                                      capacity[name])
      min_count[name] = 1 if threshold == 1 else epochs * threshold
    # The admission sketch is memory too: size it for the ids there are
    # (two counters per id and hash function), not the default 4,096. Its
    # counts never age (`admission_window=0`): they add up over the epochs.
    tables = {name: clicks.collisionless(
        name, capacity[name], min_count=min_count[name], seed=seed + i,
        admission_width=2 * distinct[name], admission_window=0)
              for i, name in enumerate(("user", "item"))}
    budget = {name: clicks.table_bytes(t) for name, t in tables.items()}
    bins = {name: budget[name] // (4 * clicks.EMBEDDING_DIM)
            for name in budget}
    variants = {
        "collisionless": tables,
        "hashing": {name: clicks.HashedEmbedding(
            clicks.EMBEDDING_DIM, bins[name], seed=seed + i, name=name)
                    for i, name in enumerate(("user", "item"))},
    }
    for variant, layers in variants.items():
      tf.keras.utils.set_random_seed(seed)
      model = clicks.ClickModel(layers["user"], layers["item"], seed=seed)
      model.compile(optimizer=tf.keras.optimizers.Adagrad(
          clicks.LEARNING_RATE))
      train(model, train_part, epochs=epochs, seed=seed)
      row = {
          "fraction": fraction, "variant": variant,
          "user_rows": (capacity if variant == "collisionless" else
                        bins)["user"],
          "item_rows": (capacity if variant == "collisionless" else
                        bins)["item"],
          "bytes": budget["user"] + budget["item"],
          "min_count": (min_count if variant == "collisionless" else
                        {"user": 1, "item": 1}),
          "auc": clicks.auc(holdout["label"], predict(model, holdout)),
          "recall@10": recall_at_k(model, train_part, holdout, items),
      }
      for name, column in (("user", "user_id"), ("item", "item_id")):
        row[f"{name}_collision_rate"] = (
            0.0 if variant == "collisionless" else
            collision_rate(train_part[column], bins[name]))
      rows.append(row)
  return {"rows": rows, "holdout_examples": len(holdout["label"])}


# ------------------------------------------------- 2. online vs frozen


def compare_online(stream: clicks.ClickStream, shards: int = 10,
                   first_fraction: float = 0.5, epochs: int = 3,
                   seed: int = 0) -> Dict:
  """A frozen batch model vs online training, per time shard.

  Returns:
    {"shards": [{"shard", "examples", "start", "end", "frozen_auc",
    "online_auc"}], "frozen_auc", "online_auc"} (the last two: the
    shards' AUCs weighted by their examples).
  """
  start = stream.newest(1 - first_fraction)
  features = stream.features()
  tf.keras.utils.set_random_seed(seed)
  model = clicks.make_model(seed=seed)
  train(model, _take(features, slice(None, start)), epochs=epochs, seed=seed)
  bounds = np.linspace(start, len(stream), shards + 1).astype(int)
  parts = [_take(features, slice(a, b))
           for a, b in zip(bounds[:-1], bounds[1:])]
  frozen = [predict(model, part) for part in parts]
  online = []
  for part in parts:
    online.append(predict(model, part))
    train(model, part)      # In time order, once: what the stream gives.
  rows = []
  for k, part in enumerate(parts):
    rows.append({
        "shard": k, "examples": len(part["label"]),
        "start": int(part["event_time"][0]),
        "end": int(part["event_time"][-1]),
        "frozen_auc": clicks.auc(part["label"], frozen[k]),
        "online_auc": clicks.auc(part["label"], online[k]),
    })
  # Overall: the shards' AUCs weighted by their examples. (One AUC over
  # all shards' scores pooled would also compare scores of different
  # model states with each other.)
  weights = np.array([r["examples"] for r in rows], np.float64)
  return {"shards": rows,
          "frozen_auc": float(np.average(
              [r["frozen_auc"] for r in rows], weights=weights)),
          "online_auc": float(np.average(
              [r["online_auc"] for r in rows], weights=weights))}


# ------------------------------------------------- 3. sync interval


def _restore(path, seed):
  """A replica: the model of the checkpoint at `path`, no optimizer."""
  replica = clicks.make_model(seed=seed)
  for table in models.find_tables(replica):
    table.build(None)
  replica({"user_id": tf.constant(["0"]), "item_id": tf.constant(["0"])})
  tf.train.Checkpoint(model=replica).restore(path).expect_partial()
  return replica


def compare_sync(stream: clicks.ClickStream,
                 intervals_minutes: Sequence[int] = (1, 10, 60),
                 dense_hours: float = 24.0, epochs: int = 3,
                 seed: int = 0, workdir: str = "/tmp") -> Dict:
  """Served-model AUC against the sparse sync interval (see module doc).

  Returns:
    {"intervals": [{"minutes", "auc", "patches_applied",
    "rows_applied"}] (minutes 0: the trainer itself), "steps",
    "examples", "seconds"}.
  """
  started = time.perf_counter()
  cut = stream.newest(HOLDOUT_FRACTION)
  features = stream.features()
  tf.keras.utils.set_random_seed(seed)
  trainer = clicks.make_model(seed=seed)
  train(trainer, _take(features, slice(None, cut)), epochs=epochs, seed=seed)
  tables = models.find_tables(trainer)
  for table in tables:
    table.export_patch()          # Replicas start from this state.
  path = tf.train.Checkpoint(model=trainer).write(
      f"{workdir}/sync-{seed}/start")
  replicas = {m: _restore(path, seed) for m in intervals_minutes}
  replica_tables = {m: {t.name: t for t in models.find_tables(r)}
                    for m, r in replicas.items()}
  pending = {m: {t.name: [] for t in tables} for m in intervals_minutes}
  synced = {m: None for m in intervals_minutes}
  applied = {m: [0, 0] for m in intervals_minutes}
  scores = {m: [] for m in (0,) + tuple(intervals_minutes)}
  served = [trainer] + [replicas[m] for m in intervals_minutes]

  @tf.function(reduce_retracing=True, autograph=False)
  def score(inputs):
    return tf.stack([m(inputs, training=False) for m in served])

  step = tf.function(trainer.train_step, reduce_retracing=True)
  online = _take(features, slice(cut, None))
  minute = online["event_time"] // 60
  bounds = np.flatnonzero(np.diff(minute)) + 1
  starts = np.concatenate([[0], bounds])
  ends = np.concatenate([bounds, [len(minute)]])
  dense_period = int(dense_hours * 60)
  dense_synced = minute[0] // dense_period
  for a, b in zip(starts, ends):
    now = int(minute[a])
    if now // dense_period != dense_synced:
      dense_synced = now // dense_period
      for replica in replicas.values():
        replica.mlp.set_weights(trainer.mlp.get_weights())
    for m in intervals_minutes:
      if synced[m] != now // m:
        # The backlog of each table, compacted into one patch: what the
        # sidecar would apply at this sync.
        for name, backlog in pending[m].items():
          if backlog:
            applied[m][0] += len(backlog)
            applied[m][1] += replica_tables[m][name].apply_patch(
                tm.merge_patches(backlog))
            backlog.clear()
      synced[m] = now // m
    batch = _take(online, slice(a, b))
    inputs = {"user_id": tf.constant(batch["user_id"]),
              "item_id": tf.constant(batch["item_id"])}
    out = score(inputs).numpy()
    for k, m in enumerate((0,) + tuple(intervals_minutes)):
      scores[m].append(out[k])
    for table in tables:
      table.advance_clock(int(batch["event_time"].max()))
    step({name: tf.constant(v) for name, v in batch.items()})
    for table in tables:
      patch = table.export_patch()
      if len(patch) or len(patch.evicted):
        for m in intervals_minutes:
          pending[m][table.name].append(patch)
  labels = online["label"]
  rows = [{"minutes": m, "auc": clicks.auc(labels, np.concatenate(scores[m])),
           "patches_applied": applied[m][0] if m else 0,
           "rows_applied": applied[m][1] if m else 0}
          for m in (0,) + tuple(intervals_minutes)]
  return {"intervals": rows, "steps": len(starts),
          "examples": len(labels), "dense_hours": dense_hours,
          "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------- all three


def run_all(stream: clicks.ClickStream, seed: int = 0, quick: bool = False,
            workdir: str = "/tmp", log=print) -> Dict:
  """Runs the three comparisons; `quick` makes each smaller (fewer table
  sizes, shards and epochs) for smoke tests."""
  epochs = 1 if quick else 3
  out = {"seed": seed, "epochs": epochs}
  started = time.perf_counter()
  fractions = (0.25, 1.0) if quick else (0.25, 0.5, 1.0, 2.0)
  log(f"evaluation 1/3: collisionless vs hashing at {len(fractions)} "
      "table sizes ...")
  out["hashing"] = compare_hashing(stream, fractions, epochs=epochs,
                                   seed=seed)
  for row in out["hashing"]["rows"]:
    log(f"  {row['fraction']:>5.3f} of the ids, {row['variant']:<13} "
        f"AUC {row['auc']:.4f}, recall@10 {row['recall@10']:.4f}, "
        f"collisions user {row['user_collision_rate']:.1%} item "
        f"{row['item_collision_rate']:.1%}")
  shards = 4 if quick else 10
  log(f"evaluation 2/3: online vs frozen over {shards} time shards ...")
  out["online"] = compare_online(stream, shards=shards, epochs=epochs,
                                 seed=seed)
  log(f"  AUC over all shards: online {out['online']['online_auc']:.4f}, "
      f"frozen {out['online']['frozen_auc']:.4f}")
  log("evaluation 3/3: sparse sync interval (1, 10, 60 minutes) ...")
  out["sync"] = compare_sync(stream, epochs=epochs, seed=seed,
                             workdir=workdir)
  log("  served AUC: " + ", ".join(
      f"{r['minutes']} min {r['auc']:.4f}" for r in out["sync"]["intervals"]))
  out["seconds"] = time.perf_counter() - started
  return out
