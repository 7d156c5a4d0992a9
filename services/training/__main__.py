from services.shared.process import run_service
from services.training.server import DEFINITION

if __name__ == "__main__":
    run_service(DEFINITION)
