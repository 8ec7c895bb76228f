"""Dataset readers and converters to the project's training-record format (low level: no model code)."""
