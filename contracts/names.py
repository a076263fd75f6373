"""The broker names other teams code against: exchanges, queues, routing key, headers.

Defined once here; the AsyncAPI document, the service's topology and its publisher all
import them, so a name cannot differ between what is documented and what is declared.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "COMMAND_EXCHANGE",
    "COMMAND_ROUTING_KEY",
    "DEAD_LETTER_EXCHANGE",
    "DEAD_LETTER_QUEUE",
    "EVENT_EXCHANGE",
    "PRODUCER_HEADER",
    "REJECTED_QUEUE",
    "REJECTION_REASON_HEADER",
    "REQUEST_QUEUE",
    "WATCH_QUEUE",
]

COMMAND_EXCHANGE: Final = "provisioner.commands"
COMMAND_ROUTING_KEY: Final = "database.cluster.create"
REQUEST_QUEUE: Final = "provisioner.requests"
EVENT_EXCHANGE: Final = "provisioner.events"
REJECTED_QUEUE: Final = "provisioner.rejected"
DEAD_LETTER_EXCHANGE: Final = "provisioner.dead-letter"
DEAD_LETTER_QUEUE: Final = "provisioner.dead-letter"
WATCH_QUEUE: Final = "provisioner.watch"

# On a parked command: why it was refused, one line per error.
REJECTION_REASON_HEADER: Final = "x-rejection-reason"
# On a command the service sends on (a retry, a parked copy): the producer it came from. The
# copy's AMQP user_id is the service's own (RabbitMQ allows no other), so the header says whose
# request it is; it is believed only on messages whose user_id is the service's.
PRODUCER_HEADER: Final = "x-provisioner-producer"
