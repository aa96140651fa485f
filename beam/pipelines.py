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
"""The joiner pipeline: events -> joined, sampled examples.

Batch (files -> batch store):

  python -m tfrs_monolith.beam.pipelines \\
      --impressions 'events/impressions*.jsonl' \\
      --actions 'events/actions*.jsonl' \\
      --output store/examples --window_seconds 600 --negative_rate 0.25

Streaming (Kafka -> Kafka): events are read with Beam's Kafka I/O, a Java
cross-language transform that needs a runner able to run it (e.g.
`--runner FlinkRunner`); examples and dead letters are written with the
project's own producer (`WriteToTopic`), which runs on any runner:

  python -m tfrs_monolith.beam.pipelines --streaming \\
      --kafka_bootstrap_servers 127.0.0.1:9092 --runner FlinkRunner ...

Without `--runner`, batch pipelines run on Beam's local FnApiRunner (what
the DirectRunner picks for batch pipelines, without first trying to fetch
the Prism runner; no network needed); `--direct_running_mode
multi_processing` spreads it over the cores.
"""

import logging
import os
import sys
from typing import List, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import SetupOptions
from apache_beam.options.pipeline_options import StandardOptions

from tfrs_monolith import streams
from tfrs_monolith.beam import events as events_lib
from tfrs_monolith.beam import join as join_lib
from tfrs_monolith.beam import sampling as sampling_lib
from tfrs_monolith.beam import topics as topics_lib

__all__ = ["JoinOptions", "JoinPipeline", "run"]

DEFAULT_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


def _names(text):
  return tuple(name.strip() for name in text.split(",") if name.strip())


class JoinOptions(PipelineOptions):
  """Flags of the joiner pipeline."""

  @classmethod
  def _add_argparse_args(cls, parser):
    files = "batch mode"
    parser.add_argument("--impressions",
                        help=f"{files}: impression event files (glob)")
    parser.add_argument("--actions", help=f"{files}: action event files")
    parser.add_argument("--input_format", default="auto",
                        choices=["auto", "jsonl", "tfrecord"],
                        help=f"{files}: event file format")
    parser.add_argument("--output",
                        help=f"{files}: batch store prefix (gzip TFRecord "
                        "shards <output>-SSSSS-of-NNNNN.tfrecord.gz)")
    parser.add_argument("--dead_letters", default=None,
                        help="dead letters: a file prefix in batch mode "
                        "(default <output dir>/dead-letters/), a topic in "
                        "streaming mode (default dead-letters)")
    parser.add_argument("--unjoined", default=None,
                        help="where events that joined nothing go, with the "
                        "reason (file prefix; default: not written)")
    parser.add_argument("--window_seconds", type=float, default=600.0,
                        help="attribution window after an impression")
    parser.add_argument("--positive_actions", default="click",
                        help="comma-separated action types that make a "
                        "positive")
    parser.add_argument("--action_types", default="",
                        help="comma-separated action types labelled too")
    parser.add_argument("--allowed_lateness_seconds", type=float,
                        default=0.0,
                        help="streaming: wait for late actions this long")
    parser.add_argument("--negative_rate", type=float, default=1.0,
                        help="probability of keeping a negative")
    parser.add_argument("--sample_seed", type=int, default=0)
    parser.add_argument("--kafka_bootstrap_servers", default=None,
                        help="streaming: Kafka bootstrap servers")
    parser.add_argument("--impressions_topic", default="impressions")
    parser.add_argument("--actions_topic", default="actions")
    parser.add_argument("--examples_topic", default="examples")

  def join_config(self) -> join_lib.JoinConfig:
    return join_lib.JoinConfig(
        window_seconds=self.window_seconds,
        positive_actions=_names(self.positive_actions),
        action_types=_names(self.action_types),
        allowed_lateness_seconds=self.allowed_lateness_seconds)


class JoinPipeline(beam.PTransform):
  """Parse -> join -> sample -> examples, on `(impression_messages,
  action_messages)`.

  Returns a dict of PCollections: `examples` (serialized
  `tf.train.Example`s), `dead_letters` (JSON dead letters of malformed
  events) and `unjoined` (`{"reason", "event"}` dicts).
  """

  def __init__(self, config: join_lib.JoinConfig, negative_rate: float = 1.0,
               sample_seed: int = 0, streaming: bool = False,
               sources=("impressions", "actions")):
    super().__init__()
    self._config = config
    self._sample = sampling_lib.NegativeSample(negative_rate, sample_seed)
    self._streaming = streaming
    self._sources = sources

  def expand(self, messages):
    impression_messages, action_messages = messages
    impressions = impression_messages | "ParseImpressions" >> (
        events_lib.ParseEvents("impression", self._sources[0],
                               timestamped=self._streaming))
    actions = action_messages | "ParseActions" >> events_lib.ParseEvents(
        "action", self._sources[1], timestamped=self._streaming)
    joined = ((impressions.events, actions.events)
              | "Join" >> join_lib.JoinEvents(self._config,
                                              streaming=self._streaming))
    examples = (joined.examples
                | "Sample" >> self._sample
                | "ToExample" >> events_lib.ToExample())
    dead = ((impressions[events_lib.DEAD_LETTER],
             actions[events_lib.DEAD_LETTER])
            | "MergeDeadLetters" >> beam.Flatten())
    return {"examples": examples, "dead_letters": dead,
            "unjoined": joined[join_lib.UNJOINED]}


def build(pipeline: beam.Pipeline, options: JoinOptions):
  """Adds the joiner, with its inputs and outputs, to `pipeline`."""
  streaming = options.view_as(StandardOptions).streaming
  config = options.join_config()
  if streaming:
    if not options.kafka_bootstrap_servers:
      raise ValueError("--streaming needs --kafka_bootstrap_servers")
    # Beam's Kafka I/O is a cross-language (Java) transform.
    from apache_beam.io import kafka  # pylint: disable=g-import-not-at-top
    consumer = {"bootstrap.servers": options.kafka_bootstrap_servers,
                "auto.offset.reset": "earliest"}
    # The same TLS / SASL login as every other client of the project
    # ($TFRS_MONOLITH_KAFKA_CONFIG), as Java client properties.
    consumer.update(streams.kafka_java_config())
    messages = tuple(
        pipeline | f"Read{name.title()}" >> kafka.ReadFromKafka(
            consumer_config=consumer, topics=[topic])
        for name, topic in (("impressions", options.impressions_topic),
                            ("actions", options.actions_topic)))
    sources = (options.impressions_topic, options.actions_topic)
  else:
    if not (options.impressions and options.actions and options.output):
      raise ValueError("batch mode needs --impressions, --actions and "
                       "--output")
    messages = (
        pipeline | "ReadImpressions" >> events_lib.ReadEvents(
            options.impressions, options.input_format),
        pipeline | "ReadActions" >> events_lib.ReadEvents(
            options.actions, options.input_format))
    sources = (options.impressions, options.actions)
  outputs = messages | "Joiner" >> JoinPipeline(
      config, options.negative_rate, options.sample_seed,
      streaming=streaming, sources=sources)
  if streaming:
    url = f"kafka://{options.kafka_bootstrap_servers}"
    outputs["examples"] | "WriteExamples" >> topics_lib.WriteToTopic(
        url, options.examples_topic)
    outputs["dead_letters"] | "WriteDeadLetters" >> topics_lib.WriteToTopic(
        url, options.dead_letters or "dead-letters")
  else:
    outputs["examples"] | "WriteExamples" >> events_lib.WriteExamples(
        options.output)
    outputs["dead_letters"] | "WriteDeadLetters" >> (
        events_lib.WriteDeadLetters(options.dead_letters or os.path.join(
            os.path.dirname(options.output), "dead-letters",
            os.path.basename(options.output))))
  if options.unjoined:
    outputs["unjoined"] | "WriteUnjoined" >> events_lib.WriteDeadLetters(
        options.unjoined)
  return outputs


def run(argv: Optional[List[str]] = None, save_main_session: bool = True):
  """Runs the joiner with command-line flags; returns the `PipelineResult`."""
  options = PipelineOptions(argv)
  options.view_as(SetupOptions).save_main_session = save_main_session
  standard = options.view_as(StandardOptions)
  if standard.runner is None and not standard.streaming:
    standard.runner = DEFAULT_RUNNER
  join_options = options.view_as(JoinOptions)
  pipeline = beam.Pipeline(options=options)
  build(pipeline, join_options)
  result = pipeline.run()
  result.wait_until_finish()
  return result


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  run(sys.argv[1:])
