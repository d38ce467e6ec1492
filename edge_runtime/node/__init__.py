"""Layer 7: the edge-node daemon.

``daemon`` (EdgeNode, its run loop, ``serve``), ``sessions`` (device sessions, credit and acks),
``schema`` (schema negotiation, the frame size), ``handoff`` (the queue between the two threads),
``worker`` (the learner thread), ``ledger`` (verdicts in SQLite), ``security`` (CURVE), ``publish``
(models to devices), ``startup`` (start-up checks), ``logs`` (JSON logging).
"""
