from services.shared.settings import DEFAULT_SERVICE_PORTS, ServiceSettings


class InferenceSettings(ServiceSettings):
    grpc_port: int = DEFAULT_SERVICE_PORTS["inference"]
    # max_tokens when a request leaves it at 0.
    default_max_tokens: int = 256
