from pydantic import Field

from services.shared.settings import DEFAULT_SERVICE_PORTS, ServiceSettings


class FeedbackSettings(ServiceSettings):
    grpc_port: int = DEFAULT_SERVICE_PORTS["feedback"]
    # A correction longer than this is refused: it is an answer, not a document.
    max_correction_chars: int = 20_000
    # How often the monitor looks at every deployment: a cooldown that ended, drift, the schedule.
    monitor_interval_s: float = Field(default=10.0, gt=0)
    # Deadline of calls to the inference service (the completion log, rollbacks).
    call_timeout_s: float = Field(default=10.0, gt=0)
