"""The shared-memory runtime: one session protocol, and one module per process role.

- ``protocol``: record kinds, tags, the request prefix, MANY/MULTI framing, error payloads,
  the one send path and the receive paths; every role speaks through it.
- ``control``: the control segment (header, worker table, channel table, counters).
- ``startup``: the worker start-up handshake, on a private channel.
- ``client``, ``worker``, ``supervisor``: the process roles. They never import each other;
  ``init_client`` hands the client ``supervisor.spawn_embedded`` to start an embedded server.

Byte layout: docs/wire-format-session.md.
"""
