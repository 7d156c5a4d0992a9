"""The training service: fine-tuning jobs and the model registry."""
