"""``keys --variant {image,video,vit,vae}``: tensor names and shapes of the full-size architecture,
one ``name<TAB>shape`` line each, in the notation of the spec's ``lance-keys-*.tsv`` tables."""
from __future__ import annotations

from ..inventory import format_shape, official_shapes

VARIANTS = ("image", "video", "vit", "vae")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "keys", help="print name<TAB>shape of every tensor of a released checkpoint file",
        description="Build the full-size architecture on the meta device and print each tensor's name and shape: "
                    "image = Lance_3B/model.safetensors, video = Lance_3B_Video/model.safetensors, "
                    "vit = Qwen2.5-VL-ViT/vit.safetensors, vae = Wan2.2_VAE.pth (needs ComfyUI: COMFYUI_PATH).")
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    parser.set_defaults(func=run)


def run(args) -> int:
    for name, shape in official_shapes(args.variant).items():
        print(f"{name}\t{format_shape(shape)}")
    return 0
