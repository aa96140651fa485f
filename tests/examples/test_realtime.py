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
"""Tests for examples/realtime.py (`make demo`) on reduced runs.

The live loop runs on the oldest ratings, through file-log topics and
through the real Kafka broker; the comparisons run in their quick form on
the oldest 20,000 ratings, asserting only the directions that held for
every seed tried (0, 1, 2).
"""

import json
import math
import pathlib
import sys

import numpy as np
import pytest

import tfrs_monolith  # pylint: disable=unused-import  # Selects Keras 2.

_EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(_EXAMPLES))
# pylint: disable=g-import-not-at-top,wrong-import-position
import clicks
import evaluation
import movielens
import realtime
# pylint: enable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def ratings():
  return movielens.load_ratings()


def _loop_args(out, *extra):
  return ["--out", str(out), "--max-ratings", "6000", "--epochs", "1",
          "--slice-hours", "8", "--dense-every", "3", "--no-evaluation",
          *extra]


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo")
  return out, realtime.main(_loop_args(out))


def test_live_loop_keeps_serving_equal_to_the_trainer(file_run):
  out, results = file_run
  loop = results["loop"]
  assert loop["transport"] == "file"
  # The joiner's examples are exactly the stream's labelled impressions,
  # nothing went to dead letters, and the served rows are the trainer's.
  assert loop["checks"] == {name: True for name in loop["checks"]}
  assert len(loop["checks"]) == 7
  slices = loop["slices"]
  assert len(slices) >= 4
  assert all(s["examples"] == s["impressions"] > 0 for s in slices)
  assert all(s["patch_rows"] > 0 for s in slices)
  # A new version was exported and served mid-run, and the sidecar
  # applied every slice's patches to the served versions.
  assert len(loop["versions"]) >= 2
  assert [s["new_version"] for s in slices if s["new_version"]] == (
      loop["versions"][1:])
  assert loop["sidecar"]["patches_applied"] >= 2 * len(slices)
  assert loop["sidecar"]["served_version"] == loop["versions"][-1]
  assert all(0.0 <= s["served_auc"] <= 1.0 for s in slices
             if not math.isnan(s["served_auc"]))
  saved = json.loads((out / "results.json").read_text())
  assert saved["loop"]["examples"] == loop["examples"]
  assert (out / "live_loop_auc.png").stat().st_size > 10_000


def test_live_loop_through_its_own_kafka_broker(tmp_path):
  # `--kafka` (`make demo-kafka`): the example starts the project's broker
  # on 127.0.0.1 in its output directory and stops it at the end.
  results = realtime.main([
      "--out", str(tmp_path), "--max-ratings", "3000", "--epochs", "1",
      "--dense-every", "0", "--no-evaluation", "--kafka"])
  loop = results["loop"]
  assert loop["transport"] == "kafka"
  assert loop["checks"] == {name: True for name in loop["checks"]}
  assert loop["examples"] == loop["impressions"] > 0
  assert not list((tmp_path / "topics").glob("*"))   # No file logs.


def test_click_stream_matches_the_ratings(ratings):
  users, items, scores, times = (a[:2000] for a in ratings)
  stream = clicks.click_stream(users, items, scores, times, negatives=2,
                               seed=3)
  per_request = np.bincount(stream.request)
  assert len(per_request) == 2000 and per_request.max() == 3
  # Only the first requests, with few movies in the pool yet, show fewer.
  assert np.all(per_request[100:] == 3)
  assert stream.label.sum() == (scores >= 4).sum() == len(
      stream.click_request)
  assert np.all(np.diff(stream.event_time) >= 0)
  rated = set(zip(users, items))
  shown = stream.request != np.r_[-1, stream.request[:-1]]
  negatives = ~shown
  assert all((u, i) not in rated for u, i in zip(
      stream.user_id[negatives], stream.item_id[negatives]))
  delay = stream.click_time - stream.event_time[stream.label > 0]
  assert delay.min() >= 1 and delay.max() <= clicks.DEFAULT_MAX_DELAY
  with pytest.raises(ValueError, match="max_delay"):
    clicks.click_stream(users, items, scores, times, max_delay=10_000)


def test_auc_matches_pairwise_counting():
  rng = np.random.default_rng(0)
  labels = rng.random(300) < 0.3
  scores = np.round(rng.normal(size=300), 1)     # With ties.
  pos, neg = scores[labels], scores[~labels]
  pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (
      pos[:, None] == neg[None, :]).mean()
  assert clicks.auc(labels, scores) == pytest.approx(pairs)
  assert math.isnan(clicks.auc([1, 1], [0.1, 0.2]))


@pytest.fixture(scope="module")
def comparisons(ratings, tmp_path_factory):
  users, items, scores, times = (a[:20_000] for a in ratings)
  stream = clicks.click_stream(users, items, scores, times, seed=0)
  return evaluation.run_all(stream, seed=0, quick=True,
                            workdir=str(tmp_path_factory.mktemp("eval")),
                            log=lambda message: None)


def test_hashing_comparison_runs_at_equal_memory(comparisons):
  # Which variant wins on this small run depends on the seed (on all the
  # data, collisionless wins once the ids fit: see the README), so only
  # the set-up and the measured collisions are asserted.
  rows = {(r["fraction"], r["variant"]): r
          for r in comparisons["hashing"]["rows"]}
  assert sorted(rows) == [(0.25, "collisionless"), (0.25, "hashing"),
                          (1.0, "collisionless"), (1.0, "hashing")]
  for fraction in (0.25, 1.0):
    table, hashed = rows[(fraction, "collisionless")], rows[(fraction,
                                                             "hashing")]
    assert table["bytes"] == hashed["bytes"]
    assert hashed["item_rows"] > table["item_rows"]    # No index to pay.
    assert table["user_collision_rate"] == table["item_collision_rate"] == 0
    for row in (table, hashed):
      assert 0.0 < row["auc"] < 1.0 and 0.0 <= row["recall@10"] <= 1.0
  # Smaller tables collide more, and admit only frequent ids.
  assert (rows[(0.25, "hashing")]["item_collision_rate"] >
          rows[(1.0, "hashing")]["item_collision_rate"] > 0.1)
  assert rows[(0.25, "collisionless")]["min_count"]["item"] > 1
  assert rows[(1.0, "collisionless")]["min_count"] == {"user": 1, "item": 1}


def test_online_training_beats_the_frozen_model(comparisons):
  online = comparisons["online"]
  assert online["online_auc"] > online["frozen_auc"]
  first = online["shards"][0]
  assert first["online_auc"] == first["frozen_auc"]   # Nothing learned yet.


def test_fresher_sync_serves_better_scores(comparisons):
  auc = {r["minutes"]: r["auc"] for r in comparisons["sync"]["intervals"]}
  assert sorted(auc) == [0, 1, 10, 60]
  assert auc[1] > auc[60]
  applied = {r["minutes"]: r["patches_applied"]
             for r in comparisons["sync"]["intervals"]}
  assert applied[1] > 0 and applied[60] > 0
