"""Plumbing every service shares: settings, bus, outbox, rpc, db, telemetry, artifacts, models.

No domain logic lives here: when two services need the same domain rule, one owns it and the
other asks over gRPC.
"""
