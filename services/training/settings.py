from services.shared.settings import DEFAULT_SERVICE_PORTS, ServiceSettings


class TrainingSettings(ServiceSettings):
    grpc_port: int = DEFAULT_SERVICE_PORTS["training"]
    # Jobs training at once; each is its own process using every core, so 1 on a CPU machine.
    max_concurrent_jobs: int = 1
    # How many times a job whose process was lost (a crash, a killed service) is started again.
    max_job_attempts: int = 3
