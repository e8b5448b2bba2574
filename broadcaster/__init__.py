"""broadcaster: exactly-once SMS campaign broadcasting."""

__version__ = "0.1.0"
