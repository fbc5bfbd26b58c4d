"""Sharded runtime: block ownership, collectives, async refresh, sharded checkpoints."""
