"""Loading a LLaVA-1.5 base: HF layout (`hf`), original LLaVA layout (`original`), vision side only (`vision`).

The public names (``__init__.pyi``) are imported on first use, so importing a light module of this
package does not import torch or transformers.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
