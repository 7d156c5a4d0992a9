"""The tuneloop command line and the local launcher that starts the whole stack."""
