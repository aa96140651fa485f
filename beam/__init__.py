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
"""Apache Beam pipelines of tfrs-monolith (installed as `tfrs_monolith.beam`).

Needs the `[beam]` extra: `pip install "tfrs-monolith[beam]"`.
"""

from tfrs_monolith.beam import events
from tfrs_monolith.beam import join
from tfrs_monolith.beam import sampling
from tfrs_monolith.beam import topics
from tfrs_monolith.beam.events import ParseEvents
from tfrs_monolith.beam.events import ReadEvents
from tfrs_monolith.beam.events import ToExample
from tfrs_monolith.beam.events import WriteDeadLetters
from tfrs_monolith.beam.events import WriteExamples
from tfrs_monolith.beam.join import JoinConfig
from tfrs_monolith.beam.join import JoinEvents
from tfrs_monolith.beam.sampling import NegativeSample
from tfrs_monolith.beam.topics import ReadFromTopic
from tfrs_monolith.beam.topics import WriteToTopic

__all__ = [
    "JoinConfig", "JoinEvents", "NegativeSample", "ParseEvents",
    "ReadEvents", "ReadFromTopic", "ToExample", "WriteDeadLetters",
    "WriteExamples", "WriteToTopic",
]
