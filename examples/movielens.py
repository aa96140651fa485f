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
"""MovieLens-100K retrieval and ranking with collisionless embeddings.

Trains two TensorFlow Recommenders models whose user and movie towers are
`tm.CollisionlessEmbedding` layers fed raw id strings (no vocabulary):

* a two-tower retrieval model (`tfrs.tasks.Retrieval`, in-batch softmax
  corrected for movie popularity, plus a learned movie bias), evaluated by
  recall@k over all movies against recommending the most rated movies;
* a ranking model (`tfrs.tasks.Ranking`, MSE on the rating) with a small MLP
  over the concatenated user and movie embeddings, evaluated by RMSE against
  predicting the mean training rating.

Ratings are split by time: the oldest 80 % train, the newest 20 % are the
holdout. Most holdout ratings come from users who joined after the split;
the tables never saw them, so they read zero vectors. Movies need two
training ratings before they get a row (`min_count=2`); the summary shows
how many were admitted after each epoch. Both models use Adagrad with
learning rate 0.1 and a fixed seed (`--seed`, default 42).

MovieLens-100K is not redistributed with this project. It is fetched on
first use from the `recbole==1.2.1` wheel on PyPI (which bundles it) into
`data/ml-100k/` and reused afterwards; its terms of use are those of the
GroupLens MovieLens dataset.

Usage:

  python examples/movielens.py [--epochs 3] [--max-ratings 20000]
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

# Importing tfrs_monolith first selects Keras 2, which TFRS needs.
import tfrs_monolith as tm

import tensorflow as tf  # pylint: disable=g-bad-import-order
import tensorflow_recommenders as tfrs  # pylint: disable=g-bad-import-order

DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "data"
RECBOLE_REQUIREMENT = "recbole==1.2.1"
_WHEEL_PREFIX = "recbole/dataset_example/ml-100k/"

EMBEDDING_DIM = 32
USER_CAPACITY = 1_000  # MovieLens-100K has 943 users.
MOVIE_CAPACITY = 2_000  # and 1,682 movies.
USER_MIN_COUNT = 1
MOVIE_MIN_COUNT = 2
LEARNING_RATE = 0.1
TRAIN_FRACTION = 0.8
TOP_KS = (10, 100)
DEFAULT_SEED = 42


# ---------------------------------------------------------------------- data


def fetch_movielens(data_dir=None) -> pathlib.Path:
  """Makes sure MovieLens-100K is in `data_dir/ml-100k/`; returns that path.

  If `ml-100k.inter` is missing, downloads the `recbole==1.2.1` wheel with
  pip into a temporary directory and extracts its `ml-100k` files.

  Args:
    data_dir: directory holding `ml-100k/`; defaults to `data/` at the root
      of the repository.

  Returns:
    The `ml-100k` directory.

  Raises:
    subprocess.CalledProcessError: if pip cannot download the wheel.
    FileNotFoundError: if the wheel holds no MovieLens-100K files.
  """
  target = pathlib.Path(data_dir or DEFAULT_DATA_DIR) / "ml-100k"
  if (target / "ml-100k.inter").is_file():
    return target
  print(f"Fetching MovieLens-100K ({RECBOLE_REQUIREMENT} wheel) into "
        f"{target} ...", flush=True)
  target.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([
        sys.executable, "-m", "pip", "download", "--no-deps",
        "--only-binary=:all:", RECBOLE_REQUIREMENT, "-d", tmp
    ], check=True)
    wheels = sorted(pathlib.Path(tmp).glob("recbole-*.whl"))
    if not wheels:
      raise FileNotFoundError(f"pip did not download a recbole wheel to {tmp}")
    with zipfile.ZipFile(wheels[0]) as wheel:
      members = [
          info for info in wheel.infolist()
          if info.filename.startswith(_WHEEL_PREFIX) and not info.is_dir() and
          "/" not in info.filename[len(_WHEEL_PREFIX):]
      ]
      if not any(m.filename.endswith("/ml-100k.inter") for m in members):
        raise FileNotFoundError(
            f"{wheels[0].name} has no {_WHEEL_PREFIX}ml-100k.inter")
      # The ratings file is written last, so that its presence means that
      # the extraction finished.
      members.sort(key=lambda m: m.filename.endswith(".inter"))
      for info in members:
        name = info.filename[len(_WHEEL_PREFIX):]
        partial = target / (name + ".part")
        with wheel.open(info) as source, open(partial, "wb") as sink:
          sink.write(source.read())
        partial.replace(target / name)
  return target


def load_ratings(data_dir=None):
  """Loads the MovieLens-100K ratings, oldest first.

  Fetches the data first if needed (see `fetch_movielens`).

  Args:
    data_dir: as in `fetch_movielens`.

  Returns:
    (user_id, item_id, rating, timestamp): NumPy arrays of equal length,
    sorted by timestamp (ties keep file order). Ids are strings, ratings
    float32 and timestamps int64 seconds.

  Raises:
    ValueError: if the header lacks one of those columns.
  """
  path = fetch_movielens(data_dir) / "ml-100k.inter"
  with open(path, encoding="utf-8") as f:
    header = f.readline().rstrip("\n").split("\t")
    rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
  # Atomic-file header fields are `name:type`.
  columns = {field.split(":")[0]: i for i, field in enumerate(header)}
  wanted = ("user_id", "item_id", "rating", "timestamp")
  missing = [name for name in wanted if name not in columns]
  if missing:
    raise ValueError(f"{path} has no column {missing}; header: {header}")
  user, item, rating, timestamp = (
      [row[columns[name]] for row in rows] for name in wanted)
  user = np.array(user, dtype=str)
  item = np.array(item, dtype=str)
  rating = np.array(rating, dtype=np.float32)
  timestamp = np.array(timestamp, dtype=np.float64).astype(np.int64)
  order = np.argsort(timestamp, kind="stable")
  return user[order], item[order], rating[order], timestamp[order]


def _dataset(features, batch_size, seed=None):
  """Batches a dict of equal-length arrays; shuffled every epoch if seeded."""
  ds = tf.data.Dataset.from_tensor_slices(features)
  if seed is not None:
    ds = ds.shuffle(len(features["user_id"]), seed=seed,
                    reshuffle_each_iteration=True)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# -------------------------------------------------------------------- models


def _towers(seed, movie_dim=EMBEDDING_DIM):
  """(user, movie) `CollisionlessEmbedding` towers over raw id strings."""
  user = tm.CollisionlessEmbedding(
      EMBEDDING_DIM, capacity=USER_CAPACITY, min_count=USER_MIN_COUNT,
      seed=seed, name="user_embedding")
  movie = tm.CollisionlessEmbedding(
      movie_dim, capacity=MOVIE_CAPACITY, min_count=MOVIE_MIN_COUNT,
      seed=seed, name="movie_embedding")
  return user, movie


class RetrievalModel(tm.Model):
  """Two-tower retrieval: dot product of user and movie embeddings.

  Movie vectors have one extra component, multiplied by a constant 1 in
  every user vector: a learned movie bias. It ranks movies for users the
  table has never seen, whose embedding is all zeros. The in-batch softmax
  is corrected for popular movies being sampled more often as negatives
  (the "movie_probability" feature: each movie's share of the training
  ratings).
  """

  def __init__(self, candidate_ids, seed=0):
    """Builds the model.

    Args:
      candidate_ids: string ids of every movie, retrieved from in evaluation.
      seed: seed of the embedding rows.
    """
    super().__init__()
    self.user_embedding, self.movie_embedding = _towers(
        seed, movie_dim=EMBEDDING_DIM + 1)
    # Creates the table's variables now, not while the candidate pipeline
    # below traces the layer.
    self.movie_embedding.build(None)
    candidates = tf.data.Dataset.from_tensor_slices(candidate_ids).batch(
        512).map(lambda ids: (ids, self.movie_embedding(ids, training=False)))
    self.task = tfrs.tasks.Retrieval(metrics=tfrs.metrics.FactorizedTopK(
        candidates=candidates, ks=TOP_KS))
    self.example_loss = tf.keras.metrics.Mean(name="example_loss")

  def user_vectors(self, user_ids, training=None):
    """User embeddings with a trailing 1 (the movie-bias component)."""
    vectors = self.user_embedding(user_ids, training=training)
    return tf.concat([vectors, tf.ones_like(vectors[..., :1])], axis=-1)

  def compute_loss(self, features, training=False):
    users = self.user_vectors(features["user_id"], training=training)
    movies = self.movie_embedding(features["movie_id"], training=training)
    # Top-k metrics scan all movies: only in evaluation. Id-based matching
    # keeps ties (e.g. between movies the table never saw) from counting as
    # hits.
    loss = self.task(
        users, movies,
        candidate_sampling_probability=features["movie_probability"],
        candidate_ids=features["movie_id"], compute_metrics=not training)
    # The retrieval loss is summed over the batch; track it per example.
    n = tf.cast(tf.shape(users)[0], tf.float32)
    self.example_loss.update_state(loss / n, sample_weight=n)
    return loss


class RankingModel(tm.Model):
  """Rating regression: an MLP over concatenated user and movie embeddings."""

  def __init__(self, seed=0):
    super().__init__()
    self.user_embedding, self.movie_embedding = _towers(seed)
    self.mlp = tf.keras.Sequential([
        tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(32, activation="relu"),
        tf.keras.layers.Dense(1),
    ])
    self.task = tfrs.tasks.Ranking(
        loss=tf.keras.losses.MeanSquaredError(),
        metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse")])
    self.example_loss = tf.keras.metrics.Mean(name="example_loss")

  def call(self, features, training=None):
    embeddings = tf.concat([
        self.user_embedding(features["user_id"], training=training),
        self.movie_embedding(features["movie_id"], training=training),
    ], axis=-1)
    return tf.squeeze(self.mlp(embeddings), axis=-1)

  def compute_loss(self, features, training=False):
    ratings = features["rating"]
    loss = self.task(labels=ratings,
                     predictions=self(features, training=training))
    self.example_loss.update_state(
        loss, sample_weight=tf.cast(tf.shape(ratings)[0], tf.float32))
    return loss


class _Progress(tf.keras.callbacks.Callback):
  """Prints the loss and records the live ids of the tables every epoch."""

  def __init__(self, layers, epochs):
    super().__init__()
    self._layers = layers
    self._epochs = epochs
    self._start = None
    self.sizes = {layer.name: [] for layer in layers}

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    tables = []
    for layer in self._layers:
      size = int(layer.table.size())
      self.sizes[layer.name].append(size)
      tables.append(f"{layer.name} {size}/{layer.table.capacity}")
    print(f"  epoch {epoch + 1}/{self._epochs}: train loss/example "
          f"{logs['example_loss']:.4f}; live ids: {', '.join(tables)} "
          f"({time.perf_counter() - self._start:.1f} s)", flush=True)


# ---------------------------------------------------------------------- main


def _fit(name, model, train, holdout, epochs, batch_size, seed):
  """Trains and evaluates `model`; returns its figures for the summary."""
  print(f"\n== {name} ==", flush=True)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(LEARNING_RATE))
  tables = [model.user_embedding, model.movie_embedding]
  progress = _Progress(tables, epochs)
  start = time.perf_counter()
  history = model.fit(_dataset(train, batch_size, seed), epochs=epochs,
                      callbacks=[progress], verbose=0)
  train_seconds = time.perf_counter() - start
  start = time.perf_counter()
  holdout_metrics = model.evaluate(_dataset(holdout, batch_size),
                                   return_dict=True, verbose=0)
  eval_seconds = time.perf_counter() - start
  print("  holdout: " + ", ".join(
      f"{k.split('/')[-1]} {v:.4f}" for k, v in holdout_metrics.items()
      if "loss" not in k) + f" ({eval_seconds:.1f} s)", flush=True)
  return {
      "train_loss": [float(x) for x in history.history["example_loss"]],
      "holdout": {k: float(v) for k, v in holdout_metrics.items()},
      "tables": {
          layer.name: {
              "size": int(layer.table.size()),
              "capacity": int(layer.table.capacity),
              "size_per_epoch": progress.sizes[layer.name],
          } for layer in tables
      },
      "train_seconds": train_seconds,
      "eval_seconds": eval_seconds,
  }


def _summary_table(results, epochs):
  """The summary printed at the end of `main`, as a string."""
  data = results["data"]
  retrieval = results["retrieval"]
  ranking = results["ranking"]
  holdout = {
      "retrieval": (f"recall@100 {retrieval['recall@100']:.4f} "
                    f"(most popular: {retrieval['popular_recall@100']:.4f})"),
      "ranking": (f"rmse {ranking['rmse']:.4f} "
                  f"(training mean: {ranking['baseline_rmse']:.4f})"),
  }
  rows = [("model", f"train loss/example, epoch 1 -> {epochs}", "holdout",
           "users live/cap", "movies live/cap")]
  for name in ("retrieval", "ranking"):
    loss = results[name]["train_loss"]
    users = results[name]["tables"]["user_embedding"]
    movies = results[name]["tables"]["movie_embedding"]
    rows.append((name, f"{loss[0]:.4f} -> {loss[-1]:.4f}", holdout[name],
                 f"{users['size']}/{users['capacity']}",
                 f"{movies['size']}/{movies['capacity']}"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
           for row in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  lines += [
      "",
      f"retrieval recall@10 {retrieval['recall@10']:.4f} (most popular: "
      f"{retrieval['popular_recall@10']:.4f})",
      f"movie admission (min_count={MOVIE_MIN_COUNT}): "
      f"{data['movies_seen']} movies in training, "
      f"{data['movies_min_count']} of them rated >= {MOVIE_MIN_COUNT} times",
  ]
  for name in ("retrieval", "ranking"):
    per_epoch = results[name]["tables"]["movie_embedding"]["size_per_epoch"]
    lines.append(f"  {name}: movies admitted after each epoch: "
                 + ", ".join(str(n) for n in per_epoch))
  lines.append(
      f"holdout: {data['num_holdout']} ratings; "
      f"{data['holdout_users_unseen']} of its {data['holdout_users']} users "
      f"({data['holdout_ratings_unseen_user']:.0%} of its ratings) and "
      f"{data['holdout_movies_unseen']} of its {data['holdout_movies']} "
      "movies are not in training")
  return "\n".join(lines)


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", type=pathlib.Path,
                      default=DEFAULT_DATA_DIR,
                      help="directory holding ml-100k/ (default: %(default)s)")
  parser.add_argument("--epochs", type=int, default=3,
                      help="training epochs per model (default: %(default)s)")
  parser.add_argument("--max-ratings", type=int, default=None,
                      help="use only the oldest N ratings (default: all)")
  parser.add_argument("--batch-size", type=int, default=1024,
                      help="examples per batch (default: %(default)s)")
  parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                      help="random seed (default: %(default)s)")
  args = parser.parse_args(argv)
  for flag in ("epochs", "batch_size"):
    if getattr(args, flag) < 1:
      parser.error(f"--{flag.replace('_', '-')} must be >= 1")
  if args.max_ratings is not None and args.max_ratings < 10:
    parser.error("--max-ratings must be >= 10")
  if args.seed < 0:
    parser.error("--seed must be >= 0")
  return args


def _popular_recall(train_movies, holdout_movies, k):
  """Holdout recall@k of recommending the k most rated training movies."""
  ids, counts = np.unique(train_movies, return_counts=True)
  top = ids[np.argsort(-counts, kind="stable")[:k]]
  return float(np.isin(holdout_movies, top).mean())


def main(argv=None):
  """Runs the example; returns the figures of the summary as a dict.

  Args:
    argv: command-line arguments (without the program name); defaults to
      `sys.argv[1:]`.

  Returns:
    A dict with keys "args", "data", "retrieval", "ranking" and "seconds".
    Each model entry has "train_loss" (mean loss per example of each
    epoch), "holdout" (all evaluation metrics) and "tables" (per table:
    "size", "capacity", "size_per_epoch"). Retrieval adds "recall@10",
    "recall@100" and the same for recommending the most rated movies
    ("popular_recall@10", ...); ranking adds "rmse" and "baseline_rmse" (of
    predicting the training mean rating).
  """
  args = _parse_args(argv)
  started = time.perf_counter()
  print(f"seed {args.seed}, epochs {args.epochs}, batch size "
        f"{args.batch_size}", flush=True)
  tf.keras.utils.set_random_seed(args.seed)

  users, movies, ratings, _ = load_ratings(args.data_dir)
  if args.max_ratings is not None:
    users, movies, ratings = (
        a[:args.max_ratings] for a in (users, movies, ratings))
  cut = int(len(users) * TRAIN_FRACTION)
  all_movies = np.unique(movies)
  # Each movie's share of the training ratings (unseen ones: one rating).
  train_ids, train_counts = np.unique(movies[:cut], return_counts=True)
  counts = dict(zip(train_ids, train_counts))
  probability = np.array([counts.get(m, 1) for m in movies],
                         np.float32) / cut
  features = {"user_id": users, "movie_id": movies, "rating": ratings,
              "movie_probability": probability}
  train = {name: a[:cut] for name, a in features.items()}
  holdout = {name: a[cut:] for name, a in features.items()}

  train_mean = float(train["rating"].mean())
  unseen_user = ~np.isin(holdout["user_id"], train["user_id"])
  data = {
      "num_ratings": len(users),
      "num_train": cut,
      "num_holdout": len(users) - cut,
      "num_users": len(np.unique(users)),
      "num_movies": len(all_movies),
      "users_seen": len(np.unique(train["user_id"])),
      "movies_seen": len(train_ids),
      "movies_min_count": int(np.sum(train_counts >= MOVIE_MIN_COUNT)),
      "holdout_users": len(np.unique(holdout["user_id"])),
      "holdout_users_unseen": len(np.unique(holdout["user_id"][unseen_user])),
      "holdout_ratings_unseen_user": float(unseen_user.mean()),
      "holdout_movies": len(np.unique(holdout["movie_id"])),
      "holdout_movies_unseen": len(
          np.setdiff1d(holdout["movie_id"], train_ids)),
      "train_mean_rating": train_mean,
  }
  print(f"{data['num_ratings']} ratings ({data['num_users']} users, "
        f"{data['num_movies']} movies): the oldest {cut} train, the newest "
        f"{data['num_holdout']} are the holdout", flush=True)

  results = {"args": vars(args), "data": data}
  retrieval = _fit("retrieval", RetrievalModel(all_movies, seed=args.seed),
                   train, holdout, args.epochs, args.batch_size, args.seed)
  for k in TOP_KS:
    retrieval[f"recall@{k}"] = retrieval["holdout"][
        f"factorized_top_k/top_{k}_categorical_accuracy"]
    retrieval[f"popular_recall@{k}"] = _popular_recall(
        train["movie_id"], holdout["movie_id"], k)
  results["retrieval"] = retrieval

  ranking = _fit("ranking", RankingModel(seed=args.seed), train, holdout,
                 args.epochs, args.batch_size, args.seed)
  ranking["rmse"] = ranking["holdout"]["rmse"]
  ranking["baseline_rmse"] = float(
      np.sqrt(np.mean((holdout["rating"] - train_mean)**2)))
  results["ranking"] = ranking

  results["seconds"] = time.perf_counter() - started
  print(f"\nSummary (seed {args.seed}, {results['seconds']:.0f} s)\n")
  print(_summary_table(results, args.epochs), flush=True)
  return results


if __name__ == "__main__":
  main()
