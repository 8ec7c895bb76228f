"""Data: the training-record format, benchmark loaders (RTVLM, UnsafeConcepts), converters, balancing and
the synthetic risk corpus. Low level: no model code."""

from .format import IMAGE_MARKER, make_record, read_records, record_label, write_records

__all__ = ["IMAGE_MARKER", "make_record", "read_records", "record_label", "write_records"]
