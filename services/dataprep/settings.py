from services.shared.settings import DEFAULT_SERVICE_PORTS, ServiceSettings


class DataprepSettings(ServiceSettings):
    grpc_port: int = DEFAULT_SERVICE_PORTS["dataprep"]
    # OpenAI's own limit for a fine-tuning file.
    max_file_bytes: int = 512 * 1024 * 1024
    # Size of the chunks GetFileContent streams.
    chunk_bytes: int = 1024 * 1024
