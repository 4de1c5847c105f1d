"""``tiny-checkpoint OUT_DIR [--seed N]``: write a tiny random-weight model set in the official layout."""
from __future__ import annotations

from ..tiny import write_tiny_checkpoint


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tiny-checkpoint", help="write tiny random-weight Lance_3B/, Lance_3B_Video/, Qwen2.5-VL-ViT/, Wan2.2_VAE.pth",
        description="Write a tiny random-weight model set (official file and key names, bf16 Lance/ViT weights, "
                    "random VAE) for tests. The same seed always gives byte-identical files. Needs ComfyUI "
                    "(COMFYUI_PATH) for the VAE's module tree.")
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    parser.add_argument("--vae-widths", choices=("official", "tiny"), default="official",
                        help="official: the released VAE widths, so ComfyUI's VAELoader accepts the file (default); "
                             "tiny: narrow widths for fast library tests")
    parser.set_defaults(func=run)


def run(args) -> int:
    models = write_tiny_checkpoint(args.out_dir, seed=args.seed, vae_widths=args.vae_widths)
    for path in (models.image, models.video, models.vit, models.vae):
        print(path)
    return 0
