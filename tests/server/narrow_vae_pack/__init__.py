"""Test-only ComfyUI pack: Load VAE builds the Wan 2.2 VAE at the widths of the file it loads
instead of always at the released widths, so the reliability tests can use the tiny test VAE
(``lance_model.tiny``, vae_widths="tiny") and decode in milliseconds. Linked only into private test
servers; never shipped."""
from __future__ import annotations

import comfy.ldm.wan.vae2_2 as vae2_2
import comfy.sd

_RELEASED_WAN22 = vae2_2.WanVAE
_RELEASED_VAE_INIT = comfy.sd.VAE.__init__
# Widths of the Wan 2.2 state dict being loaded (models load one at a time, on the executor thread).
_loading: dict[str, int] = {}


class WidthsOfTheFile(_RELEASED_WAN22):
    """Still a WanVAE subclass, so isinstance checks against ``vae2_2.WanVAE`` hold."""

    def __init__(self, **config):
        super().__init__(**{**config, **_loading})


def _vae_init(self, sd=None, *args, **kwargs):
    _loading.clear()
    if sd is not None and "decoder.head.0.gamma" in sd and "encoder.conv1.weight" in sd:
        _loading.update(dim=sd["encoder.conv1.weight"].shape[0], dec_dim=sd["decoder.head.0.gamma"].shape[0])
    return _RELEASED_VAE_INIT(self, sd, *args, **kwargs)


vae2_2.WanVAE = WidthsOfTheFile
comfy.sd.VAE.__init__ = _vae_init
NODE_CLASS_MAPPINGS: dict = {}
