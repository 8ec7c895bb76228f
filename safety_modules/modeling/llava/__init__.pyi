# The package's public names, for type checkers and for `lazy_loader.attach_stub` in `__init__.py`,
# which reads this file and imports each name on first use.

from .common import DEVICE_ENV as DEVICE_ENV
from .common import ORIGINAL_ARCHITECTURES as ORIGINAL_ARCHITECTURES
from .common import is_original_format as is_original_format
from .common import local_folder as local_folder
from .common import read_config as read_config
from .common import resolve_device as resolve_device
from .common import resolve_dtype as resolve_dtype
from .conversation import LLAVA_CHAT_TEMPLATE as LLAVA_CHAT_TEMPLATE
from .hf import load_base as load_base
from .original import convert_original_key as convert_original_key
from .original import llama_tokenizer as llama_tokenizer
from .vision import VisionParts as VisionParts
from .vision import load_vision_parts as load_vision_parts
from .vision import select_vision_features as select_vision_features
from .vision import vision_encoder as vision_encoder
