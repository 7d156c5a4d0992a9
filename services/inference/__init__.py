"""The inference service: generation from the base model and its adapters, and the completion log."""
