"""The shipped workflows: one graph per Lance task, with the reference's settings.

Reference defaults (the official inference script and demo): 30 Euler steps, shift 3.5, guidance 4.0
inside the flow-time interval (0.4, 1.0], seed 42; images 768x768 (image_768res), video 848x480
(video_480p) at 12 fps; text-to-video 121 frames, image-to-video 61.
"""
from __future__ import annotations

from dataclasses import dataclass

from lance_model.checkpoint import IMAGE_FOLDER_NAME, VAE_FILE_NAME, VIDEO_FOLDER_SUFFIX

from .graph import Graph, Node, Output

IMAGE_CHECKPOINT = IMAGE_FOLDER_NAME
VIDEO_CHECKPOINT = IMAGE_FOLDER_NAME + VIDEO_FOLDER_SUFFIX
CHECKPOINTS = {"image": IMAGE_CHECKPOINT, "video": VIDEO_CHECKPOINT}
# The preset the reference uses for an input of each kind (edit sources, captioner inputs, i2v start images).
RESOLUTIONS = {"image": "image_768res", "video": "video_480p"}
REFERENCE_SAMPLING = dict(seed=42, steps=30, cfg=4.0, shift=3.5, cfg_start=0.4, cfg_end=1.0)
IMAGE_SIZE = dict(width=768, height=768)
VIDEO_SIZE = dict(width=848, height=480)
VIDEO_FPS = 12.0
T2V_FRAMES, I2V_FRAMES = 121, 61
EXAMPLE_IMAGE, EXAMPLE_VIDEO = "example.png", "example.mp4"
OUTPUT_FOLDER = "Lance"


@dataclass(frozen=True)
class Workflow:
    name: str  # file stem in workflows/ and workflows/api/; the template browser shows it
    summary: str  # one line for the note beside the graph
    graph: Graph


def _loader(graph: Graph, checkpoint: str) -> Node:
    return graph.add("LanceCheckpointLoader", checkpoint=checkpoint)


def _vae(graph: Graph) -> Node:
    return graph.add("VAELoader", vae_name=VAE_FILE_NAME)


def _sample(graph: Graph, model: Node, cond: Output, latent: Output, title: str | None = None, lane: int = 0) -> Node:
    return graph.add("LanceSampler", title=title, lane=lane, model=model[0], cond=cond, latent=latent,
                     **REFERENCE_SAMPLING)


def _load_image(graph: Graph) -> Output:
    return graph.add("LoadImage", image=EXAMPLE_IMAGE)[0]


def _source(graph: Graph, kind: str) -> dict[str, Output]:
    """The example input as LanceEditEncode / LanceCaptioner inputs: an image, or a clip's frames and frame
    rate (GetVideoComponents: images, audio, fps)."""
    if kind == "image":
        return dict(image=_load_image(graph))
    video = graph.add("LoadVideo", file=EXAMPLE_VIDEO)
    clip = graph.add("GetVideoComponents", video=video[0])
    return dict(image=clip[0], fps=clip[2])


def _save(graph: Graph, kind: str, images: Output, name: str) -> None:
    if kind == "image":
        graph.add("SaveImage", images=images, filename_prefix=f"{OUTPUT_FOLDER}/{name}")
        return
    video = graph.add("CreateVideo", images=images, fps=VIDEO_FPS)
    graph.add("SaveVideo", video=video[0], filename_prefix=f"{OUTPUT_FOLDER}/{name}", format="mp4", codec="h264")


def _text_to(kind: str, prompt: str, size: dict, frames: int, summary: str) -> Workflow:
    name = f"text_to_{kind}"
    graph = Graph()
    model = _loader(graph, CHECKPOINTS[kind])
    cond = graph.add("LanceTextEncode", model=model[0], task=name, prompt=prompt)
    latent = graph.add("LanceEmptyLatent", **size, frames=frames)
    sampled = _sample(graph, model, cond[0], latent[0])
    decoded = graph.add("VAEDecode", samples=sampled[0], vae=_vae(graph)[0])
    _save(graph, kind, decoded[0], name)
    return Workflow(name, summary, graph)


def _edit(kind: str, instruction: str, summary: str) -> Workflow:
    name = f"{kind}_edit"
    graph = Graph()
    model = _loader(graph, CHECKPOINTS[kind])
    vae = _vae(graph)
    edit = graph.add("LanceEditEncode", model=model[0], vae=vae[0], **_source(graph, kind), kind=kind,
                     resolution=RESOLUTIONS[kind], instruction=instruction)
    sampled = _sample(graph, model, edit[0], edit[1])
    decoded = graph.add("VAEDecode", samples=sampled[0], vae=vae[0])
    _save(graph, kind, decoded[0], name)
    return Workflow(name, summary, graph)


def _to_text(kind: str, question: str, summary: str) -> Workflow:
    graph = Graph()
    model = _loader(graph, CHECKPOINTS[kind])
    answer = graph.add("LanceCaptioner", model=model[0], **_source(graph, kind), kind=kind,
                       resolution=RESOLUTIONS[kind], question=question)
    graph.add("PreviewAny", title="Answer", source=answer[0])
    return Workflow(f"{kind}_to_text", summary, graph)


def text_to_image() -> Workflow:
    return _text_to("image", "A red fox sitting in a snowy birch forest at sunrise, soft golden light, detailed fur, "
                    "shallow depth of field.", IMAGE_SIZE, frames=1, summary="Text to image, 768x768.")


def text_to_video() -> Workflow:
    return _text_to("video", "A sailing boat glides across a calm turquoise bay at golden hour, gentle waves, "
                    "seagulls overhead. The camera slowly pans right.", VIDEO_SIZE, frames=T2V_FRAMES,
                    summary="Text to video, 848x480, 121 frames (10 s at 12 fps).")


def image_to_video() -> Workflow:
    graph = Graph()
    model = _loader(graph, VIDEO_CHECKPOINT)
    vae = _vae(graph)
    start = _load_image(graph)
    cond = graph.add("LanceTextEncode", model=model[0], task="text_to_video",
                     prompt="The scene comes to life: leaves sway in a light breeze and the camera slowly "
                            "pushes in.")
    latent = graph.add("LanceImageToVideoLatent", vae=vae[0], start_image=start, frames=I2V_FRAMES,
                       resolution=RESOLUTIONS["video"])
    sampled = _sample(graph, model, cond[0], latent[0])
    frames = graph.add("VAEDecode", samples=sampled[0], vae=vae[0])
    _save(graph, "video", frames[0], "image_to_video")
    return Workflow("image_to_video", "Image to video: the image is the first frame; 61 frames (5 s at 12 fps) in "
                    "the 480p bucket of its aspect.", graph)


def image_edit() -> Workflow:
    return _edit("image", "Turn the scene into a watercolour painting.",
                 "Image edit: the result keeps the source's aspect at about 768x768 pixels.")


def image_edit_chain() -> Workflow:
    """Three edits in a row: each round edits the decoded result of the previous one."""
    graph = Graph()
    model = _loader(graph, IMAGE_CHECKPOINT)
    vae = _vae(graph)
    image = _load_image(graph)
    instructions = ("Make it winter: cover the ground in fresh snow.",
                    "Add a small red wooden cabin in the background.",
                    "Change the time of day to dusk with warm window light.")
    for round_number, instruction in enumerate(instructions, start=1):
        lane = dict(lane=round_number)  # one row per round
        edit = graph.add("LanceEditEncode", title=f"Edit {round_number}: encode", model=model[0], vae=vae[0],
                         image=image, kind="image", resolution=RESOLUTIONS["image"], instruction=instruction, **lane)
        sampled = _sample(graph, model, edit[0], edit[1], title=f"Edit {round_number}: sample", **lane)
        image = graph.add("VAEDecode", title=f"Edit {round_number}: decode", samples=sampled[0], vae=vae[0],
                          **lane)[0]
        graph.add("SaveImage", title=f"Edit {round_number}: save", images=image,
                  filename_prefix=f"{OUTPUT_FOLDER}/image_edit_chain_{round_number}", **lane)
    return Workflow("image_edit_chain", "Three chained image edits: each round edits the decoded result of the "
                    "previous one.", graph)


def video_edit() -> Workflow:
    return _edit("video", "Change the colour of the car to bright red.",
                 "Video edit: the clip is resampled to 12 fps, at most 6 s (69 frames), in the 480p bucket of its "
                 "aspect.")


def image_to_text() -> Workflow:
    return _to_text("image", "Describe this image in detail.", "Image captioning and questions about an image.")


def video_to_text() -> Workflow:
    return _to_text("video", "Describe this video in detail.", "Video captioning and questions about a clip.")


WORKFLOWS = (text_to_image, text_to_video, image_to_video, image_edit, image_edit_chain, video_edit,
             image_to_text, video_to_text)


def all_workflows() -> list[Workflow]:
    return [make() for make in WORKFLOWS]
