from pydantic import AliasChoices, Field, SecretStr

from services.shared.settings import Settings


class GatewaySettings(Settings):
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("TUNELOOP_GATEWAY_HOST"))
    port: int = Field(default=8000, validation_alias=AliasChoices("TUNELOOP_GATEWAY_PORT"))
    grpc_port: int = Field(default=50051, validation_alias=AliasChoices("TUNELOOP_GATEWAY_GRPC_PORT"))
    # The bootstrap admin key. Unset: a key is generated on the first start, printed once, stored hashed.
    api_key: SecretStr | None = None
    # How often the gateway re-checks NATS and the services for /healthz and gRPC health.
    health_interval_s: float = 2.0
    # Deadline of one call from the gateway to a service.
    rpc_timeout_s: float = 600.0
    # One log line per HTTP request (uvicorn's access log). Off by default, as in gunicorn: every
    # completion is already in the completion log and, with TUNELOOP_OTLP_ENDPOINT, a span.
    access_log: bool = Field(default=False, validation_alias=AliasChoices("TUNELOOP_GATEWAY_ACCESS_LOG"))
