"""Tests for `tfrs_monolith.beam.events` and `.sampling`, and the log-odds
correction of `tfrs_monolith.sampling`."""

import json
import math

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
import numpy as np
import pytest
import tensorflow as tf

import tfrs_monolith as tm
from tfrs_monolith import online
from tfrs_monolith import streams
from tfrs_monolith.beam import events
from tfrs_monolith.beam import sampling

GOOD_IMPRESSION = {"request_id": "r1", "user_id": 7, "item_id": "a",
                   "event_time": 100.5,
                   "features": {"age": 31, "device": "ios",
                                "scores": [0.5, 1]}}


def _pipeline():
  return test_pipeline.TestPipeline(runner="BundleBasedDirectRunner")


class TestParseEvents:

  def test_good_and_malformed_events(self):
    messages = [
        json.dumps(GOOD_IMPRESSION).encode(),
        b"{not json",
        json.dumps(dict(GOOD_IMPRESSION, user_id=None)).encode(),
        json.dumps(dict(GOOD_IMPRESSION, event_time=-5)).encode(),
        json.dumps(dict(GOOD_IMPRESSION, features={"label": 1})).encode(),
        json.dumps(dict(GOOD_IMPRESSION, features={"x": [1, "a"]})).encode(),
        json.dumps(dict(GOOD_IMPRESSION, features={"big": 1 << 63})).encode(),
        (b"key", json.dumps(dict(GOOD_IMPRESSION, request_id="r2")).encode()),
    ]
    with _pipeline() as p:
      parsed = (p | beam.Create(messages)
                | events.ParseEvents("impression", source="imp.jsonl"))
      assert_that(parsed.events | beam.Map(lambda e: e["request_id"]),
                  equal_to(["r1", "r2"]), label="Events")
      letters = parsed[events.DEAD_LETTER] | beam.Map(
          streams.DeadLetterQueue.decode)
      assert_that(letters | beam.Map(
          lambda l: (l["topic"], l["reason"].split(":")[0],
                     l["reason"].split("'")[1] if "'" in l["reason"] else "")),
                  equal_to([("imp.jsonl", "not JSON", ""),
                            ("imp.jsonl", "bad field", "user_id"),
                            ("imp.jsonl", "bad field", "event_time"),
                            ("imp.jsonl", "bad field", "label"),
                            ("imp.jsonl", "bad field", "x"),
                            ("imp.jsonl", "bad field", "big")]),
                  label="DeadLetters")
      # The original bytes survive, for replay after a fix.
      assert_that(letters | beam.Map(lambda l: l["value"])
                  | beam.Filter(lambda v: v == b"{not json"),
                  equal_to([b"{not json"]), label="Original")

  def test_bad_kind(self):
    with pytest.raises(ValueError, match="kind='click'"):
      events.ParseEvents("click")


class TestExampleSchema:

  def test_to_example_parses_with_the_trainer_spec(self):
    joined = {"request_id": "r1", "user_id": "7", "item_id": "a",
              "event_time": 100, "label": 1.0, "sample_rate": 0.5,
              "actions": {"click": 1.0, "like": 0.0},
              "features": {"age": 31, "device": "ios", "scores": [0.5, 1]}}
    serialized = events.to_example(joined).SerializeToString()
    spec = dict(online.DEFAULT_FEATURE_SPEC,
                request_id=tf.io.FixedLenFeature([], tf.string),
                action_like=tf.io.FixedLenFeature([], tf.float32),
                age=tf.io.FixedLenFeature([], tf.int64),
                device=tf.io.FixedLenFeature([], tf.string),
                scores=tf.io.FixedLenFeature([2], tf.float32))
    parsed = tf.io.parse_single_example(serialized, spec)
    assert parsed["user_id"].numpy() == b"7"
    assert parsed["item_id"].numpy() == b"a"
    assert parsed["label"].numpy() == 1.0
    assert parsed["event_time"].numpy() == 100
    assert parsed["sample_rate"].numpy() == 0.5
    assert parsed["action_like"].numpy() == 0.0
    assert parsed["age"].numpy() == 31
    assert parsed["device"].numpy() == b"ios"
    np.testing.assert_allclose(parsed["scores"].numpy(), [0.5, 1.0])


def _example(i, label):
  return {"request_id": f"r{i}", "user_id": f"u{i % 7}", "item_id": f"i{i}",
          "event_time": i, "label": label, "sample_rate": 1.0,
          "actions": {}, "features": {}}


class TestNegativeSample:

  def test_keeps_positives_and_a_deterministic_share_of_negatives(self):
    rate = 0.3
    examples = ([_example(i, 0.0) for i in range(4000)] +
                [_example(i, 1.0) for i in range(4000, 4100)])
    expected = [e["request_id"] for e in examples
                if e["label"] > 0 or sampling.keep_negative(e, rate, 11)]
    kept_negatives = len(expected) - 100
    # Binomial(4000, 0.3): mean 1200, sd 29.
    assert abs(kept_negatives - 1200) < 5 * 29
    # Another seed keeps other negatives: about rate**2 of them are common.
    seed_11 = {e["request_id"] for e in examples[:4000]
               if sampling.keep_negative(e, rate, 11)}
    seed_12 = {e["request_id"] for e in examples[:4000]
               if sampling.keep_negative(e, rate, 12)}
    assert abs(len(seed_11 & seed_12) - 4000 * rate**2) < 5 * 17
    with _pipeline() as p:
      sampled = (p | beam.Create(examples)
                 | sampling.NegativeSample(rate, seed=11))
      assert_that(sampled | beam.Map(lambda e: e["request_id"]),
                  equal_to(expected), label="Kept")
      assert_that(sampled | beam.Map(lambda e: (e["label"], e["sample_rate"]))
                  | beam.Distinct(),
                  equal_to([(0.0, rate), (1.0, 1.0)]), label="Rates")

  @pytest.mark.parametrize("rate", [0, 1.5, -0.1, float("nan"), "half", True])
  def test_bad_rate(self, rate):
    with pytest.raises(ValueError, match="rate"):
      sampling.NegativeSample(rate)

  def test_bad_seed(self):
    with pytest.raises(ValueError, match="seed='x'"):
      sampling.NegativeSample(0.5, seed="x")


class TestCorrection:

  def test_correct_logits_undoes_the_sampling_bias(self):
    # True click probability 0.1; negatives kept at rate 0.2 make the
    # trained odds 0.1 / 0.9 / 0.2, whose corrected logit is the true one.
    rate = 0.2
    trained_logit = math.log(0.1 / (0.9 * rate))
    corrected = tm.sampling.correct_logits(tf.constant([trained_logit]), rate)
    np.testing.assert_allclose(tf.sigmoid(corrected).numpy(), [0.1],
                               rtol=1e-5)
    # Per-example rates (a tensor) work the same.
    per_example = tm.sampling.correct_logits(
        tf.constant([trained_logit, 0.0]), tf.constant([rate, 1.0]))
    np.testing.assert_allclose(per_example.numpy(),
                               [math.log(0.1 / 0.9), 0.0], rtol=1e-5)

  def test_bad_inputs(self):
    with pytest.raises(ValueError, match="rate=0"):
      tm.sampling.correct_logits(tf.constant([1.0]), 0)
    with pytest.raises(ValueError, match="int32"):
      tm.sampling.correct_logits(tf.constant([1]), 0.5)
