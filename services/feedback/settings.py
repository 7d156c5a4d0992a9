from services.shared.settings import DEFAULT_SERVICE_PORTS, ServiceSettings


class FeedbackSettings(ServiceSettings):
    grpc_port: int = DEFAULT_SERVICE_PORTS["feedback"]
    # A correction longer than this is refused: it is an answer, not a document.
    max_correction_chars: int = 20_000
