"""The chaos run: several service replicas, a faulty simulator, kills and broker cuts.

``python -m tests.chaos.run --requests N`` (``make chaos`` at full size; a reduced size runs
inside ``make test``). ``rabbitmq_node`` starts a RabbitMQ node of a test's own, for the
broker outage and TLS tests, which must never touch the machine's main broker.
"""

from __future__ import annotations
