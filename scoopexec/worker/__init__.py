"""The worker: a process that runs tasks, each on a greenlet, and waits by parking.

``worker`` (the hub: its loop, its table of messages, running and submitting tasks),
``waiting`` (parking a task on futures and timers), ``channels`` (the link or socket to
the broker, the outbox, forwarded output), ``setup`` (a pool's set-up blob, both sides),
``lifeline`` (ending when the client or broker is gone), ``main`` (the command line).
"""
