"""Hostile commands for the service: a hand-written corpus (``corpus``) and generated ones
(``generated``), each case with the JSON path its rejection must name."""

from __future__ import annotations
