"""Training data: the record format, converters from published layouts, balancing and the synthetic risk corpus."""
from .format import IMAGE_MARKER, make_record, read_records, record_label, write_records

__all__ = ["IMAGE_MARKER", "make_record", "read_records", "record_label", "write_records"]
