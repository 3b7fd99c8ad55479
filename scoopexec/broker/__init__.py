"""The broker: one poll loop between submitters and workers; it never unpickles.

``loop`` (Broker: the loop and its table of message handlers), ``ledger`` (tasks,
attempts, workers, clients: plain objects), ``scheduling`` (who gets which task: functions
of the ledger), ``ports`` (the transports: ROUTER, socketpair links, the in-process client).
"""
