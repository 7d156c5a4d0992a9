from services.shared.settings import DEFAULT_SERVICE_PORTS, ServiceSettings


class EvaluationSettings(ServiceSettings):
    grpc_port: int = DEFAULT_SERVICE_PORTS["evaluation"]
    # One ComputeMetrics call scores at most this many pairs.
    max_pairs: int = 100_000
