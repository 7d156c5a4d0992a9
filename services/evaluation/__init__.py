"""The evaluation service: metrics, side-by-side runs and the promotion gate."""
