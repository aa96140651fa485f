"""Tests for `tfrs_monolith.beam.join` (batch and streaming)."""

import collections

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
import pytest

import tfrs_monolith  # noqa: F401  Selects Keras 2 before TensorFlow.
from tfrs_monolith.beam import join as join_lib

CONFIG = join_lib.JoinConfig(window_seconds=60, positive_actions=("click",),
                             action_types=("like",))


def imp(request, item, t, user="u1", **features):
  return {"request_id": request, "user_id": user, "item_id": item,
          "event_time": float(t), "features": features}


def act(request, item, t, action="click"):
  return {"request_id": request, "item_id": item, "action": action,
          "event_time": float(t)}


def summary(example):
  """The fields a test checks, hashable."""
  return (example["request_id"], example["item_id"], example["label"],
          example["actions"]["click"], example["actions"]["like"],
          example["event_time"])


def unjoined_summary(letter):
  event = letter["event"]
  return (letter["reason"], event["request_id"], str(event["item_id"]),
          event.get("action", "impression"))


def assert_joined(joined, examples, unjoined):
  """Checks a `JoinEvents` result: `summary` of each example and
  `unjoined_summary` of each unjoined event, in any order."""
  assert_that(joined.examples | "SummarizeExamples" >> beam.Map(summary),
              equal_to(examples), label="Examples")
  assert_that(joined.unjoined | "SummarizeUnjoined" >> beam.Map(
      unjoined_summary), equal_to(unjoined), label="Unjoined")


class TestAttribute:

  def test_window_duplicates_and_labels(self):
    example, unjoined = join_lib.attribute(
        [imp("r", "i", 100), imp("r", "i", 90)],        # 90 is the first
        [act("r", "i", 95), act("r", "i", 120), act("r", "i", 150),
         act("r", "i", 151, "like"), act("r", "i", 80, "like"),
         act("r", "i", 96, "share")], CONFIG)
    assert summary(example) == ("r", "i", 1.0, 1.0, 0.0, 90)
    assert sorted((r, e.get("action"), e["event_time"])
                  for r, e in unjoined) == [
                      ("action_after_window", "like", 151.0),
                      ("action_before_impression", "like", 80.0),
                      ("duplicate_action", "click", 120.0),
                      ("duplicate_action", "click", 150.0),
                      ("duplicate_impression", None, 100.0),
                      ("unknown_action", "share", 96.0)]

  def test_window_end_is_inclusive_and_negatives(self):
    example, _ = join_lib.attribute([imp("r", 7, 0)],
                                    [act("r", 7, 60, "like")], CONFIG)
    assert summary(example) == ("r", "7", 0.0, 0.0, 1.0, 0)
    assert example["user_id"] == "u1" and example["sample_rate"] == 1.0

  def test_orphans(self):
    example, unjoined = join_lib.attribute([], [act("r", "i", 5)], CONFIG)
    assert example is None
    assert [r for r, _ in unjoined] == ["orphan_action"]

  @pytest.mark.parametrize("kwargs, match", [
      (dict(window_seconds=0), "window_seconds=0"),
      (dict(window_seconds=float("inf")), "window_seconds=inf"),
      (dict(positive_actions=()), "positive_actions=()"),
      (dict(positive_actions="click"), "positive_actions='click'"),
      (dict(action_types=("a b",)), "action_types=\\('a b',\\)"),
      (dict(allowed_lateness_seconds=-1), "allowed_lateness_seconds=-1"),
  ])
  def test_bad_config(self, kwargs, match):
    with pytest.raises(ValueError, match=match):
      join_lib.JoinConfig(**kwargs)


class TestBatchJoin:

  def test_join(self):
    impressions = [imp("r1", "a", 100), imp("r1", "b", 100),
                   imp("r2", "a", 200), imp("r2", "a", 200)]   # duplicate
    actions = [act("r1", "a", 130), act("r1", "b", 170),      # after window
               act("r2", "a", 210, "like"), act("r3", "z", 5)]  # orphan
    with test_pipeline.TestPipeline(runner="BundleBasedDirectRunner") as p:
      joined = ((p | "I" >> beam.Create(impressions),
                 p | "A" >> beam.Create(actions))
                | join_lib.JoinEvents(CONFIG))
      assert_joined(joined, [
          ("r1", "a", 1.0, 1.0, 0.0, 100),
          ("r1", "b", 0.0, 0.0, 0.0, 100),
          ("r2", "a", 0.0, 0.0, 1.0, 200),
      ], [
          ("action_after_window", "r1", "b", "click"),
          ("duplicate_impression", "r2", "a", "impression"),
          ("orphan_action", "r3", "z", "click"),
      ])

  def test_rejects_bad_arguments(self):
    with pytest.raises(TypeError, match="config=60"):
      join_lib.JoinEvents(60)
    with pytest.raises(TypeError, match="streaming='yes'"):
      join_lib.JoinEvents(CONFIG, streaming="yes")


def _streaming_pipeline():
  options = PipelineOptions(runner="BundleBasedDirectRunner")
  options.view_as(StandardOptions).streaming = True
  return test_pipeline.TestPipeline(options=options)


def _timestamped(events):
  return [beam.window.TimestampedValue(e, e["event_time"]) for e in events]


class TestStreamingJoin:

  def test_out_of_order_late_and_duplicate_events(self):
    config = join_lib.JoinConfig(window_seconds=60, action_types=("like",),
                                 allowed_lateness_seconds=10)
    stream = (test_stream.TestStream()
              .add_elements(_timestamped([imp("r1", "a", 100)]),
                            tag="impressions")
              # Out of order: the action of r2 arrives before its impression.
              .add_elements(_timestamped([act("r2", "b", 205),
                                          act("r1", "a", 150)]),
                            tag="actions")
              .advance_watermark_to(150, tag="impressions")
              .advance_watermark_to(150, tag="actions")
              .add_elements(_timestamped([imp("r2", "b", 200)]),
                            tag="impressions")
              # Within r1's window, arriving after the watermark passed 100
              # but before the window + lateness (170): still joined.
              .add_elements(_timestamped([act("r1", "a", 155, "like")]),
                            tag="actions")
              .advance_watermark_to(200, tag="impressions")
              .advance_watermark_to(200, tag="actions")
              # r1's example is out (at 170): these are too late.
              .add_elements(_timestamped([act("r1", "a", 158)]),
                            tag="actions")
              .add_elements(_timestamped([imp("r1", "a", 100)]),
                            tag="impressions")
              .add_elements(_timestamped([imp("r3", "c", 300)]),
                            tag="impressions")
              .add_elements(_timestamped([act("r9", "x", 300)]),
                            tag="actions")
              .advance_watermark_to(10_000, tag="impressions")
              .advance_watermark_to(10_000, tag="actions")
              .advance_watermark_to_infinity())
    with _streaming_pipeline() as p:
      inputs = p | stream
      joined = ((inputs["impressions"], inputs["actions"])
                | join_lib.JoinEvents(config, streaming=True))
      assert_joined(joined, [
          ("r1", "a", 1.0, 1.0, 1.0, 100),
          ("r2", "b", 1.0, 1.0, 0.0, 200),
          ("r3", "c", 0.0, 0.0, 0.0, 300),
      ], [
          ("late_action", "r1", "a", "click"),
          ("duplicate_impression", "r1", "a", "impression"),
          ("orphan_action", "r9", "x", "click"),
      ])

  def test_streaming_equals_batch(self):
    impressions = [imp(f"r{i}", f"i{i % 3}", 10 * i) for i in range(20)]
    impressions.append(imp("r4", "i1", 41))     # duplicate, later
    actions = [act(f"r{i}", f"i{i % 3}", 10 * i + 5 * (i % 4),
                   "click" if i % 2 else "like") for i in range(0, 20, 3)]
    actions.append(act("r7", "i1", 71))         # second action
    actions.append(act("r99", "i0", 50))        # orphan
    everything = sorted(impressions + actions, key=lambda e: e["event_time"])

    # The expected result: `attribute` applied to each key's events.
    groups = collections.defaultdict(lambda: ([], []))
    for event in impressions:
      groups[join_lib.join_key(event)][0].append(event)
    for event in actions:
      groups[join_lib.join_key(event)][1].append(event)
    expected_examples, expected_unjoined = [], []
    for key_impressions, key_actions in groups.values():
      example, unjoined = join_lib.attribute(key_impressions, key_actions,
                                             CONFIG)
      if example is not None:
        expected_examples.append(summary(example))
      expected_unjoined += [unjoined_summary({"reason": r, "event": e})
                            for r, e in unjoined]
    assert len(expected_examples) == 20 and len(expected_unjoined) == 2

    with test_pipeline.TestPipeline(runner="BundleBasedDirectRunner") as p:
      batch = ((p | "I" >> beam.Create(impressions),
                p | "A" >> beam.Create(actions))
               | join_lib.JoinEvents(CONFIG))
      assert_joined(batch, expected_examples, expected_unjoined)

    stream = test_stream.TestStream()
    watermark = -1.0
    for event in everything:   # In event-time order, watermark following.
      tag = "actions" if "action" in event else "impressions"
      stream.add_elements(_timestamped([event]), tag=tag)
      if event["event_time"] - 1 > watermark:
        watermark = event["event_time"] - 1
        for t in ("impressions", "actions"):
          stream.advance_watermark_to(watermark, tag=t)
    for t in ("impressions", "actions"):
      stream.advance_watermark_to(10_000, tag=t)
    stream.advance_watermark_to_infinity()
    with _streaming_pipeline() as p:
      inputs = p | stream
      joined = ((inputs["impressions"], inputs["actions"])
                | join_lib.JoinEvents(CONFIG, streaming=True))
      assert_joined(joined, expected_examples, expected_unjoined)
