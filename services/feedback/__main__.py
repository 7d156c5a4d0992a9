from services.feedback.server import DEFINITION
from services.shared.process import run_service

if __name__ == "__main__":
    run_service(DEFINITION)
