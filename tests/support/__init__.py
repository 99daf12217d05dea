"""Shared test helpers and factories: API users and specs (api), the browser harness (ui), real
worker processes and Redis brokers (processes), database rows (factories)."""
