"""The user's side: the Executor, its conversation with a broker, and the embedded broker.

``executor`` (ScoopExecutor: the concurrent.futures contract), ``future`` (ScoopFuture),
``session`` (a client's futures and messages with its broker), ``embedded`` (a private
broker in a thread and local workers, for ``ScoopExecutor()``), ``remote`` (a client of a
standalone broker).
"""
