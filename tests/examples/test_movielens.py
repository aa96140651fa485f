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
"""Tests for examples/movielens.py, run on the oldest 20,000 ratings.

The data is fetched once into the repository's `data/` directory and reused.
"""

import importlib.util
import math
import pathlib
import subprocess

import numpy as np
import pytest

import tfrs_monolith  # pylint: disable=unused-import  # Selects Keras 2.

_EXAMPLE = (pathlib.Path(__file__).resolve().parents[2] / "examples" /
            "movielens.py")
_MAX_RATINGS = 20_000
_EPOCHS = 2


def _load_example():
  spec = importlib.util.spec_from_file_location("movielens_example",
                                                _EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


movielens = _load_example()


@pytest.fixture(scope="module")
def ratings():
  """(user, item, rating, timestamp) of all ratings, oldest first."""
  return movielens.load_ratings()


@pytest.fixture(scope="module")
def split(ratings):
  """Training and holdout (user, item, rating) as the example splits them."""
  users, items, stars, _ = (a[:_MAX_RATINGS] for a in ratings)
  cut = int(0.8 * _MAX_RATINGS)
  return ((users[:cut], items[:cut], stars[:cut]),
          (users[cut:], items[cut:], stars[cut:]))


@pytest.fixture(scope="module")
def results(ratings):  # pylint: disable=unused-argument  # Fetches the data.
  return movielens.main(
      ["--max-ratings", str(_MAX_RATINGS), "--epochs", str(_EPOCHS)])


def test_load_ratings(ratings):
  users, items, stars, timestamps = ratings
  assert len(users) == len(items) == len(stars) == len(timestamps) == 100_000
  assert np.all(np.diff(timestamps) >= 0)
  assert len(np.unique(users)) == 943
  assert len(np.unique(items)) == 1682
  assert set(np.unique(stars)) == {1.0, 2.0, 3.0, 4.0, 5.0}
  assert users.dtype.kind == items.dtype.kind == "U"


def test_fetch_reuses_downloaded_data(ratings, monkeypatch):
  del ratings  # Only makes sure the data is there.

  def fail(*args, **kwargs):
    raise AssertionError(f"unexpected download: {args} {kwargs}")

  monkeypatch.setattr(subprocess, "run", fail)
  path = movielens.fetch_movielens()
  assert (path / "ml-100k.inter").is_file()


@pytest.mark.slow
def test_train_loss_falls(results):
  for name in ("retrieval", "ranking"):
    loss = results[name]["train_loss"]
    assert len(loss) == _EPOCHS
    assert all(math.isfinite(x) for x in loss)
    assert loss[-1] < loss[0], (name, loss)


@pytest.mark.slow
def test_ranking_beats_predicting_the_training_mean(results, split):
  (_, _, train_stars), (_, _, holdout_stars) = split
  baseline = np.sqrt(np.mean((holdout_stars - train_stars.mean())**2))
  rmse = results["ranking"]["rmse"]
  assert math.isfinite(rmse)
  assert rmse < baseline, (rmse, baseline)
  assert results["ranking"]["baseline_rmse"] == pytest.approx(baseline)


@pytest.mark.slow
def test_retrieval_beats_chance(results, split):
  (_, train_items, _), (_, holdout_items, _) = split
  num_movies = len(np.union1d(train_items, holdout_items))
  recall = results["retrieval"]["recall@100"]
  assert results["data"]["num_movies"] == num_movies
  assert 100 / num_movies < recall <= 1.0, recall


@pytest.mark.slow
def test_tables_hold_training_ids_within_capacity(results, split):
  (train_users, _, _), _ = split
  for name in ("retrieval", "ranking"):
    tables = results[name]["tables"]
    for table in tables.values():
      assert 0 < table["size"] <= table["capacity"], (name, table)
    # min_count=1 admits every training user; evaluation inserts nothing.
    assert tables["user_embedding"]["size"] == len(np.unique(train_users))


@pytest.mark.slow
def test_movie_admission_needs_two_ratings(results, split):
  (_, train_items, _), _ = split
  _, counts = np.unique(train_items, return_counts=True)
  seen = len(counts)
  rated_twice = int(np.sum(counts >= 2))
  assert rated_twice < seen  # The data has movies rated only once.
  for name in ("retrieval", "ranking"):
    admitted = results[name]["tables"]["movie_embedding"]["size_per_epoch"]
    # After one pass, movies rated once stay out (up to a few false
    # positives of the count-min sketch, which never undercounts).
    assert rated_twice <= admitted[0] < seen, (name, admitted)
    assert admitted[0] <= rated_twice + 0.05 * (seen - rated_twice)
    # The next pass counts every movie again, so all of them reach 2.
    assert admitted[-1] == seen, (name, admitted)
