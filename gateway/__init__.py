"""The one public door: OpenAI-compatible REST, platform routes, and the public gRPC services."""
