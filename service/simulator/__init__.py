"""A local DigitalOcean Databases API for the demo, the tests and the benchmarks.

``Simulator(SimulatorConfig(...))`` serves the endpoints the service uses over real HTTP,
with DigitalOcean's auth, validation, rate limits and error bodies, plus fault injection.
``provisioner simulate`` runs it from the command line (``service.cli.simulate``).
"""

from __future__ import annotations

from service.simulator.config import SimulatorConfig
from service.simulator.server import Simulator
from service.simulator.stats import SimulatorStats

__all__ = ["Simulator", "SimulatorConfig", "SimulatorStats"]
