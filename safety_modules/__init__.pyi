# The package's public names, for type checkers and for `lazy_loader.attach_stub` in `__init__.py`,
# which reads this file and imports each name on first use.

from .gate import Gate as Gate
from .gate import GatedAnswer as GatedAnswer
from .modeling import CheckpointError as CheckpointError
from .modeling import IncompatibleBaseError as IncompatibleBaseError
from .modeling import SafeLlava as SafeLlava
from .modeling import SafeLlavaOutput as SafeLlavaOutput
from .modeling import SafetyConfig as SafetyConfig
from .modeling import SafetyModules as SafetyModules
from .modeling import SafetyScores as SafetyScores
from .policy import PolicyError as PolicyError
from .policy import SafetyDecision as SafetyDecision
from .policy import SafetyPolicy as SafetyPolicy
from .taxonomy import Taxonomy as Taxonomy
