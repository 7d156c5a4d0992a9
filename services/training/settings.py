from services.shared.settings import DEFAULT_SERVICE_PORTS, ServiceSettings


class TrainingSettings(ServiceSettings):
    grpc_port: int = DEFAULT_SERVICE_PORTS["training"]
