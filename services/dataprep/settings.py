from pydantic import Field

from services.shared.settings import DEFAULT_SERVICE_PORTS, ServiceSettings


class DataprepSettings(ServiceSettings):
    grpc_port: int = DEFAULT_SERVICE_PORTS["dataprep"]
    # OpenAI's own limit for a fine-tuning file.
    max_file_bytes: int = 512 * 1024 * 1024
    # Size of the chunks GetFileContent streams.
    chunk_bytes: int = 1024 * 1024
    # Processes that normalise and anonymise large files (see transform.py): 0 means one per CPU
    # core, 1 means none (everything in the service's own process).
    pipeline_workers: int = 0
    # A retraining set replays this many examples of the parent model's training data per
    # correction (as many as there are, if fewer), so the new version does not forget them.
    retrain_replay_ratio: float = Field(default=1.0, ge=0)
    # The longest wait between tries while the feedback or training service cannot be reached;
    # the wait doubles from one second up to this, and the set is tried for as long as it takes.
    retrain_retry_max_s: float = Field(default=60.0, gt=0)
