"""The domain: handle a command, watch a cluster, finish a cluster.

It talks to RabbitMQ and DigitalOcean only through the Protocols in ``ports``, so a test
can hand it the real broker and client or recorded ones.
"""

from __future__ import annotations
