"""prediction-service: a small, fast model server for trading models."""

__version__ = "0.1.0"
