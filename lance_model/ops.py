"""Layer factories.

Every Linear / Embedding / Conv3d of the model is created through an ``operations`` namespace so
that ComfyUI can inject ``comfy.ops`` classes (fp8 storage, on-the-fly casting, partial loading).
Outside ComfyUI the plain torch layers below are used.
"""
import torch


class TorchOps:
    """Plain ``torch.nn`` layers that skip random initialisation (weights are always loaded)."""

    class Linear(torch.nn.Linear):
        def reset_parameters(self):
            return None

    class Embedding(torch.nn.Embedding):
        def reset_parameters(self):
            return None

    class Conv3d(torch.nn.Conv3d):
        def reset_parameters(self):
            return None
