"""Names shared across layers, defined once: the stream metrics a learner reports and every view shows.

The learner's summary, ``history.csv``, ``status.json``, the report and the benchmarks' CSVs all use
these keys; a view imports the name instead of spelling it.
"""

from __future__ import annotations

#: Accuracy of predictions made before learning from the sample (river's prequential evaluation).
PREQUENTIAL_ACCURACY = "prequential_accuracy"
#: Accuracy on the streamed ``split: eval`` samples (predicted, never learned from).
EVAL_ACCURACY = "eval_accuracy"
#: Modality name -> accuracy of that modality's own head (its unimodal logits) on the streamed
#: ``split: eval`` samples (None before the first); the fused model's is :data:`EVAL_ACCURACY`.
MODALITY_EVAL_ACCURACY = "modality_eval_accuracy"
#: Samples the learner has seen (train and eval).
SAMPLES_SEEN = "samples_seen"
#: Optimiser updates made.
UPDATES = "updates"
#: Samples held by the replay buffer.
BUFFER_ITEMS = "buffer_items"
#: Bytes the replay buffer's samples take.
BUFFER_BYTES = "buffer_bytes"

# Logger names: the ``logger`` field of every JSON log line, kept as they were before the packages
# moved (an operator's log filters match on them).
#: The daemon, its threads, its operator views and its model publisher.
LOGGER_NODE = "edge_runtime.node"
#: The replay buffer and its stores.
LOGGER_BUFFER = "edge_runtime.buffer"
#: Checkpoint saving and restoring.
LOGGER_CHECKPOINT = "edge_runtime.checkpoint"
#: The learning history file (history.csv).
LOGGER_HISTORY = "edge_runtime.history"
