# The package's public names, for type checkers and for `lazy_loader.attach_stub` in `__init__.py`,
# which reads this file and imports each name on first use.

from .configuration import SafetyConfig as SafetyConfig
from .fingerprint import base_fingerprint as base_fingerprint
from .head import SafetyHead as SafetyHead
from .projector import SafetyProjector as SafetyProjector
from .safe_llava import SafeLlava as SafeLlava
from .safe_llava import SafeLlavaOutput as SafeLlavaOutput
from .safety_modules import CheckpointError as CheckpointError
from .safety_modules import IncompatibleBaseError as IncompatibleBaseError
from .safety_modules import SafetyModules as SafetyModules
from .scores import SafetyScores as SafetyScores
