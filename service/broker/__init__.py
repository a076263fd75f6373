"""RabbitMQ: the topology, publishing with confirms, and consuming."""

from __future__ import annotations
