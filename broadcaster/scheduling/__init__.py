"""Scheduled campaigns: TOML files, occurrences, slogan rotation, the planner and the daemon.

The database is the source of truth: a fire only ever calls :func:`ledger.ensure_occurrence`, which
creates the run for (job, occurrence) once, whatever wakes it and however often.
"""
