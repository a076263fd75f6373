"""Benchmarks: each prints a table and, last, one JSON line with its figures and goal."""

from __future__ import annotations
