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
"""Joins impressions with user actions into labelled examples.

An impression (request id, user id, item id, features, event time) is
joined with the actions (request id, item id, action type, event time) on
the same (request id, item id) that happen within `window_seconds` after
it. The joined example is positive (`label` 1) if one of the
`positive_actions` happened, negative otherwise; each type of
`action_types` also gets its own 0/1 label. Both modes follow the same
rules (`attribute`):

* batch (`streaming=False`): `CoGroupByKey` over bounded inputs;
* streaming (`streaming=True`): a stateful `DoFn` keyed by (request id,
  item id) that holds the impression and its actions and emits the example
  when the event-time watermark passes the end of the window (plus
  `allowed_lateness_seconds`).

Events that do not become (part of) an example go to the `unjoined` output
with a reason, and are counted (Beam metrics, namespace
`tfrs_monolith.join`):

* `duplicate_impression`: a second impression of the same (request, item);
  the earliest is joined;
* `duplicate_action`: an action of a type already attributed;
* `action_before_impression` / `action_after_window`: outside the window;
* `late_action`: arrived (streaming) after its example was emitted;
* `orphan_action`: no impression for its (request, item);
* `unknown_action`: a type that is neither positive nor in `action_types`.
"""

import dataclasses
import json
import math
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import coders
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import Timestamp

__all__ = ["JoinConfig", "JoinEvents", "attribute", "join_key", "UNJOINED",
           "METRICS_NAMESPACE"]

METRICS_NAMESPACE = "tfrs_monolith.join"
UNJOINED = "unjoined"

JoinKey = typing.Tuple[str, str]


@dataclasses.dataclass(frozen=True)
class JoinConfig:
  """How impressions and actions are joined.

  Attributes:
    window_seconds: an action counts for an impression if it happens within
      this many seconds after it (inclusive).
    positive_actions: action types that make an example positive.
    action_types: action types that get their own `action_<type>` label
      (the positive ones always do).
    allowed_lateness_seconds: streaming only: how long after the window
      closes (in event time) an example waits for late actions.
  """
  window_seconds: float = 600.0
  positive_actions: Tuple[str, ...] = ("click",)
  action_types: Tuple[str, ...] = ()
  allowed_lateness_seconds: float = 0.0

  def __post_init__(self):
    for name in ("window_seconds", "allowed_lateness_seconds"):
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, (int, float)) or
          not math.isfinite(value) or value < 0 or
          (name == "window_seconds" and value == 0)):
        raise ValueError(f"`{name}` must be a finite number of seconds "
                         f"{'> 0' if name == 'window_seconds' else '>= 0'}. "
                         f"Received: {name}={value!r}")
    for name in ("positive_actions", "action_types"):
      value = getattr(self, name)
      if isinstance(value, str) or not all(
          isinstance(v, str) and v and v.replace("_", "").isalnum()
          for v in value):
        raise ValueError(f"`{name}` must be a sequence of action type names "
                         f"(letters, digits, _). Received: {name}={value!r}")
      object.__setattr__(self, name, tuple(value))
    if not self.positive_actions:
      raise ValueError("`positive_actions` must name at least one action "
                       "type. Received: positive_actions=()")

  @property
  def labelled_actions(self) -> Tuple[str, ...]:
    """Action types with a label feature, positive ones first."""
    return tuple(dict.fromkeys(self.positive_actions + self.action_types))


def join_key(event: Dict[str, Any]) -> JoinKey:
  """The (request id, item id) an event joins on; item ids as text."""
  return event["request_id"], str(event["item_id"])


def _order(event):
  return event["event_time"], json.dumps(event, sort_keys=True, default=str)


def _sorted(events):
  """`events` by time, ties broken by content: the same order on any
  runner, whatever order the events arrived in."""
  return sorted(events, key=_order) if len(events) > 1 else list(events)


def attribute(impressions: Sequence[Dict[str, Any]],
              actions: Sequence[Dict[str, Any]],
              config: JoinConfig
              ) -> Tuple[Optional[Dict[str, Any]], List[Tuple[str, Dict]]]:
  """Joins the events of one (request id, item id).

  Args:
    impressions: parsed impression events of the key (any order).
    actions: parsed action events of the key (any order).
    config: the `JoinConfig`.

  Returns:
    `(example, unjoined)`: the joined example (None without an impression)
    and `(reason, event)` for every event not used.
  """
  if not impressions:
    return None, [("orphan_action", a) for a in _sorted(actions)]
  first, *duplicates = _sorted(impressions)
  unjoined = [("duplicate_impression", e) for e in duplicates]
  start = first["event_time"]
  end = start + config.window_seconds
  labelled = config.labelled_actions
  fired = set()
  for action in _sorted(actions):
    kind = action["action"]
    if kind not in labelled:
      reason = "unknown_action"
    elif action["event_time"] < start:
      reason = "action_before_impression"
    elif action["event_time"] > end:
      reason = "action_after_window"
    elif kind in fired:
      reason = "duplicate_action"
    else:
      fired.add(kind)
      continue
    unjoined.append((reason, action))
  positive = any(kind in fired for kind in config.positive_actions)
  example = {
      "request_id": first["request_id"],
      "user_id": str(first["user_id"]),
      "item_id": str(first["item_id"]),
      "event_time": int(math.floor(start)),
      "label": 1.0 if positive else 0.0,
      "actions": {kind: 1.0 if kind in fired else 0.0 for kind in labelled},
      "sample_rate": 1.0,
      "features": dict(first.get("features", {})),
  }
  return example, unjoined


class _Counted:
  """Emits examples and unjoined events, counting each kind."""

  def __init__(self):
    self._counters = {}

  def _count(self, name, n=1):
    if name not in self._counters:
      self._counters[name] = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                          name)
    self._counters[name].inc(n)

  def _emit(self, example, unjoined):
    if example is not None:
      self._count("examples")
      self._count("positives" if example["label"] > 0 else "negatives")
      yield example
    for reason, event in unjoined:
      self._count(reason)
      yield pvalue.TaggedOutput(UNJOINED, {"reason": reason, "event": event})


class _AttributeFn(_Counted, beam.DoFn):
  """Batch: joins the co-grouped events of one key."""

  def __init__(self, config):
    _Counted.__init__(self)
    beam.DoFn.__init__(self)
    self._config = config

  def process(self, element):
    _, grouped = element
    yield from self._emit(*attribute(list(grouped["impressions"]),
                                     list(grouped["actions"]), self._config))


class _StreamingJoinFn(_Counted, beam.DoFn):
  """Streaming: holds the events of one key until its window closes.

  The `emit` timer fires when the watermark passes the end of the earliest
  impression's window plus the allowed lateness; the example goes out and
  the key remembers that it did until `expire`, one window later, so that
  stragglers are counted as late rather than as orphans. Actions with no
  impression yet wait until `expire` (their own window end): an impression
  may still arrive out of order.
  """

  IMPRESSIONS = userstate.BagStateSpec("impressions", coders.PickleCoder())
  ACTIONS = userstate.BagStateSpec("actions", coders.PickleCoder())
  EMITTED = userstate.ReadModifyWriteStateSpec("emitted",
                                               coders.BooleanCoder())
  EXPIRES_AT = userstate.ReadModifyWriteStateSpec("expires_at",
                                                  coders.FloatCoder())
  EMIT = userstate.TimerSpec("emit", TimeDomain.WATERMARK)
  EXPIRE = userstate.TimerSpec("expire", TimeDomain.WATERMARK)

  def __init__(self, config):
    _Counted.__init__(self)
    beam.DoFn.__init__(self)
    self._config = config
    self._wait = config.window_seconds + config.allowed_lateness_seconds

  def _expire_at(self, expires_at, timer, seconds):
    """Moves the `expire` timer to `seconds` if that is later."""
    current = expires_at.read()
    if current is None or seconds > current:
      expires_at.write(seconds)
      timer.set(Timestamp(seconds))

  def process(self, element,
              impressions=beam.DoFn.StateParam(IMPRESSIONS),
              actions=beam.DoFn.StateParam(ACTIONS),
              emitted=beam.DoFn.StateParam(EMITTED),
              expires_at=beam.DoFn.StateParam(EXPIRES_AT),
              emit_timer=beam.DoFn.TimerParam(EMIT),
              expire_timer=beam.DoFn.TimerParam(EXPIRE)):
    _, (kind, event) = element
    if emitted.read():
      # The example of this key is out: anything more is too late.
      reason = "duplicate_impression" if kind == "impression" else (
          "late_action")
      yield from self._emit(None, [(reason, event)])
      return
    if kind == "impression":
      held = list(impressions.read())
      impressions.add(event)
      earliest = min([e["event_time"] for e in held] + [event["event_time"]])
      emit_timer.set(Timestamp(earliest + self._wait))
    else:
      actions.add(event)
      self._expire_at(expires_at, expire_timer,
                      event["event_time"] + self._wait)

  @userstate.on_timer(EMIT)
  def emit(self,
           fired_at=beam.DoFn.TimestampParam,
           impressions=beam.DoFn.StateParam(IMPRESSIONS),
           actions=beam.DoFn.StateParam(ACTIONS),
           emitted=beam.DoFn.StateParam(EMITTED),
           expires_at=beam.DoFn.StateParam(EXPIRES_AT),
           expire_timer=beam.DoFn.TimerParam(EXPIRE)):
    yield from self._emit(*attribute(list(impressions.read()),
                                     list(actions.read()), self._config))
    impressions.clear()
    actions.clear()
    emitted.write(True)
    self._expire_at(expires_at, expire_timer,
                    fired_at.micros / 1e6 + self._wait)

  @userstate.on_timer(EXPIRE)
  def expire(self,
             impressions=beam.DoFn.StateParam(IMPRESSIONS),
             actions=beam.DoFn.StateParam(ACTIONS),
             emitted=beam.DoFn.StateParam(EMITTED),
             expires_at=beam.DoFn.StateParam(EXPIRES_AT)):
    if list(impressions.read()):
      return    # An impression is waiting for its own `emit` timer.
    if not emitted.read():
      yield from self._emit(*attribute([], list(actions.read()),
                                       self._config))
    impressions.clear()
    actions.clear()
    emitted.clear()
    expires_at.clear()


def _tagged(kind):
  def tag(event):
    return join_key(event), (kind, event)
  return tag


class JoinEvents(beam.PTransform):
  """Joins parsed impressions and actions into labelled examples.

  Input: a pair `(impressions, actions)` of PCollections of parsed events
  (`tm.streams.parse_impression` / `parse_action` dicts, as
  `tfrs_monolith.beam.ParseEvents` makes them). In streaming mode their
  elements must carry event-time timestamps.

  Output: a `DoOutputsTuple` with `examples` (joined example dicts, see
  `attribute`) and `unjoined` (`{"reason": ..., "event": ...}`).

  Example:

  ```python
  joined = (impressions, actions) | JoinEvents(JoinConfig(window_seconds=60))
  joined.examples | ...
  ```
  """

  def __init__(self, config: Optional[JoinConfig] = None,
               streaming: bool = False):
    super().__init__()
    if config is not None and not isinstance(config, JoinConfig):
      raise TypeError(f"`config` must be a JoinConfig. Received: "
                      f"config={config!r}")
    if not isinstance(streaming, bool):
      raise TypeError(f"`streaming` must be a bool. Received: "
                      f"streaming={streaming!r}")
    self._config = config or JoinConfig()
    self._streaming = streaming

  def expand(self, pcolls):
    impressions, actions = pcolls
    if self._streaming:
      tagged = typing.Tuple[JoinKey, typing.Tuple[str, typing.Any]]
      return ((impressions | "TagImpressions" >> beam.Map(
                  _tagged("impression")).with_output_types(tagged),
               actions | "TagActions" >> beam.Map(
                   _tagged("action")).with_output_types(tagged))
              | "Merge" >> beam.Flatten()
              | "JoinInState" >> beam.ParDo(
                  _StreamingJoinFn(self._config)).with_outputs(
                      UNJOINED, main="examples"))
    keyed = typing.Tuple[JoinKey, typing.Any]
    return ({"impressions": impressions | "KeyImpressions" >> beam.Map(
                 lambda e: (join_key(e), e)).with_output_types(keyed),
             "actions": actions | "KeyActions" >> beam.Map(
                 lambda e: (join_key(e), e)).with_output_types(keyed)}
            | "CoGroup" >> beam.CoGroupByKey()
            | "Attribute" >> beam.ParDo(_AttributeFn(self._config)
                                        ).with_outputs(UNJOINED,
                                                       main="examples"))
