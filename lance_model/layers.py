"""Small building blocks shared by the LLM experts and the vision tower."""
import torch
from torch import nn

from .ops import TorchOps


class RMSNorm(nn.Module):
    """Qwen RMSNorm: variance in fp32, normalised value cast back before the weight multiply.

    The weight follows the input's dtype, so storing weights in another precision (ComfyUI's
    ``manual_cast``) does not change the dtype that flows on."""

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(device=x.device, dtype=dtype) * x32.to(dtype)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``."""

    def __init__(self, dim: int, hidden: int, bias: bool, ops=TorchOps, device=None, dtype=None):
        super().__init__()
        self.gate_proj = ops.Linear(dim, hidden, bias=bias, device=device, dtype=dtype)
        self.up_proj = ops.Linear(dim, hidden, bias=bias, device=device, dtype=dtype)
        self.down_proj = ops.Linear(hidden, dim, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
