"""The gate: score, decide, generate. It drives a `SafeLlava` from above (the model never imports it).

`vision_scorer` scores images with the vision tower and the safety modules only, never the language model,
on the uint8 inputs that `pixels` prepares: the scan and the server's proxy mode use it.

The public names (``__init__.pyi``) are imported on first use, so importing a light module of this
package does not import torch or transformers.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
