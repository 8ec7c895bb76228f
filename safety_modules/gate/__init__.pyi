# The package's public names, for type checkers and for `lazy_loader.attach_stub` in `__init__.py`,
# which reads this file and imports each name on first use.

from .answer import GatedAnswer as GatedAnswer
from .gate import REFUSAL_MODES as REFUSAL_MODES
from .gate import Gate as Gate
from .vision_scorer import VisionScorer as VisionScorer
