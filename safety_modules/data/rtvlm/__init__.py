"""RTVLM (``MMInstruction/RedTeamingVLM``) from the raw files of a local snapshot.

`subsets`: the files, field names and row rules per subset; `files`: zip extraction and image lookup;
`loader`: `load_rtvlm`, the seeded split, item images; `records`: training records and their labels.
"""

from .loader import (
    RTVLMData,
    RTVLMFormatError,
    RTVLMItem,
    load_item_image,
    load_rtvlm,
    split_items,
)
from .records import item_label, rtvlm_conversion, rtvlm_to_records, target_answer
from .subsets import CAUTION, CAUTION_OLD, REFUSE, SAFE, SUBSETS, SUBTASKS, Subset

__all__ = [
    "CAUTION",
    "CAUTION_OLD",
    "REFUSE",
    "SAFE",
    "SUBSETS",
    "SUBTASKS",
    "RTVLMData",
    "RTVLMFormatError",
    "RTVLMItem",
    "Subset",
    "item_label",
    "load_item_image",
    "load_rtvlm",
    "rtvlm_conversion",
    "rtvlm_to_records",
    "split_items",
    "target_answer",
]
