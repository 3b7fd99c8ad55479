"""What crosses a process boundary: the message format, serialization, keys, and framing.

``protocol`` (message kinds, headers, per-kind shapes), ``serialize`` (calls, results and
exceptions as frames), ``security`` (CURVE keys and key files), ``framing`` (moving messages
over a socketpair or a ZeroMQ socket; the self-pipe), ``spin`` (a short busy wait on a link
before sleeping on it).  Nothing here listens on an endpoint.
"""
