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
