"""Container health check for a tuneloop service: `python -m services.shared.healthcheck HOST:PORT`.

Asks the standard gRPC health service (grpc.health.v1) for the whole server (service "") and
exits 0 when it answers SERVING, 1 otherwise: not serving, unreachable, or no answer within
3 seconds. Docker and docker-compose health checks run it inside the service's own container;
Kubernetes uses its native `grpc:` probe instead, which asks the same question. Neither sends
metadata, so the health service must stay exempt from the internal-token check.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0


def is_serving(address: str, timeout: float = TIMEOUT_SECONDS) -> bool:
    """Whether the gRPC server at `address` (host:port) reports itself SERVING within `timeout`."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m services.shared.healthcheck HOST:PORT", file=sys.stderr)
        # Not 2: Docker reserves that exit code in health checks.
        return 1
    if is_serving(args[0]):
        return 0
    print(f"{args[0]} is not SERVING", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
