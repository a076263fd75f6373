"""The chaos run: several service replicas, a faulty simulator, kills and broker cuts.

``python -m tests.chaos.run --requests N`` (``make chaos`` at full size; a reduced size runs
inside ``make test``). The processes it starts (service replicas, RabbitMQ nodes) and
``rabbitmqctl`` are driven by helpers in ``tests/fixtures/``, which the integration tests share.
"""

from __future__ import annotations
