"""Interrupts and out-of-memory errors against a real server: Cancel during prefill, sampling, VAE decoding
and captioning leaves the server up and the next prompt succeeding, 20 interrupted runs leave its resident
memory where warm-up left it, and an out-of-memory error inside sampling (injected by the test-only pack)
becomes advice on what to change, with the memory released for the next prompt."""
from __future__ import annotations

import pytest
from comfy_client import progress_values
from reliability_graphs import Graph, t2i
from reliability_server import tiny_reliability_server

TIMEOUT_S = 300
INTERRUPTED_RUNS = 20
RSS_TOLERANCE = 0.02
LONG_STEPS = 1000  # the sampler's maximum: minutes of work, so an interrupt always lands mid-run
LONG_TOKENS = 4096  # the captioner's maximum
# A prompt near the context limit, so the prefill is the longest pass of the encode.
LONG_PROMPT = " ".join(["A red fox jumps over the lazy dog in the snow."] * 30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tiny_reliability_server(tmp_path_factory, "reliability_interrupts") as (running, _):
        yield running


# ------------------------------------------------------------------------------------------------ graphs
# Each phase: a graph, the node whose start (or first progress report) triggers the interrupt, and the
# same graph shortened so that it completes (warm-up and "the next prompt succeeds").


def prefill_graph(seed: int, short: bool) -> tuple[Graph, str, str]:
    graph, sampler = t2i(steps=1 if short else LONG_STEPS, prompt=LONG_PROMPT, seed=seed)
    encode = next(n for n, node in graph.prompt.items() if node["class_type"] == "LanceTextEncode")
    # A new seed keeps the cached encode from being reused, so the prefill runs every time.
    graph.prompt[encode]["inputs"]["prompt"] = f"{LONG_PROMPT} Seed {seed}."
    return graph, encode, "executing"


def sampling_graph(seed: int, short: bool) -> tuple[Graph, str, str]:
    graph, sampler = t2i(steps=1 if short else LONG_STEPS, side=64, seed=seed)
    return graph, sampler, "progress"


def decoding_graph(seed: int, short: bool) -> tuple[Graph, str, str]:
    graph = Graph()
    model = graph.loader("Lance_3B_Video")
    latent = graph.sampler(model, graph.text_encode(model, task="text_to_video"),
                           graph.empty_latent(64, 64, frames=5 if short else 61), steps=1, seed=seed)
    decode = graph.add("VAEDecode", samples=latent, vae=graph.vae())
    graph.add("PreviewAny", source=[decode, 0])
    return graph, decode, "executing"


def captioning_graph(seed: int, short: bool) -> tuple[Graph, str, str]:
    graph = Graph()
    image = [graph.add("EmptyImage", width=64, height=48, batch_size=1, color=seed), 0]
    captioner = graph.caption(graph.loader("Lance_3B"), image, max_new_tokens=4 if short else LONG_TOKENS)
    return graph, captioner, "progress"


PHASES = {"prefill": prefill_graph, "sampling": sampling_graph, "decoding": decoding_graph,
          "captioning": captioning_graph}


# ------------------------------------------------------------------------------------------------ helpers


def interrupted_run(server, phase: str, seed: int) -> dict:
    """One run of ``phase`` cancelled mid-way; returns its execution_interrupted data."""
    graph, node, trigger = PHASES[phase](seed, short=False)
    entry, _ = server.run_and_interrupt(graph.prompt, node, trigger, timeout=TIMEOUT_S)
    assert entry["status"]["status_str"] == "error", (phase, entry["status"])
    (data,) = [data for kind, data in entry["status"]["messages"] if kind == "execution_interrupted"]
    return data | {"graph": graph, "trigger_node": node}


def completed_run(server, phase: str, seed: int) -> dict:
    graph, _, _ = PHASES[phase](seed, short=True)
    entry, _ = server.run_prompt(graph.prompt, timeout=TIMEOUT_S)
    assert entry["status"]["status_str"] == "success", (phase, entry["status"])
    return entry


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("phase", list(PHASES))
def test_an_interrupt_stops_the_run_and_the_next_prompt_succeeds(server, phase, record_property):
    completed_run(server, phase, seed=1)
    data = interrupted_run(server, phase, seed=2)
    graph, node = data["graph"], data["trigger_node"]
    record_property("stopped at", (data["node_type"], "executed before", data["executed"]))
    # Lance nodes stop at their next step / token; nodes without inner checks (the prefill's encode, the
    # native VAE Decode) finish their pass and the run stops before the node after them.
    stopped_at = graph.prompt[data["node_id"]]["class_type"]
    if phase in ("sampling", "captioning"):
        assert data["node_id"] == node
    elif phase == "prefill":
        assert stopped_at in ("LanceTextEncode", "LanceSampler")
    else:
        assert stopped_at in ("VAEDecode", "PreviewAny")
    assert server.is_alive()
    completed_run(server, phase, seed=3)


def test_twenty_interrupted_runs_leave_resident_memory_where_warm_up_left_it(server, record_property):
    for seed, phase in enumerate(PHASES):  # warm-up: every path once to completion and once interrupted
        completed_run(server, phase, seed=10 + seed)
        interrupted_run(server, phase, seed=20 + seed)
    baseline = server.settled_rss_kib()
    stops = []
    for run in range(INTERRUPTED_RUNS):
        phase = list(PHASES)[run % len(PHASES)]
        stops.append(interrupted_run(server, phase, seed=100 + run)["node_type"])
    completed_run(server, "sampling", seed=999)
    after = server.settled_rss_kib()
    record_property("RSS after warm-up (MiB)", round(baseline / 1024, 1))
    record_property(f"RSS after {INTERRUPTED_RUNS} interrupted runs (MiB)", round(after / 1024, 1))
    record_property("nodes the runs stopped at", stops)
    assert len(stops) == INTERRUPTED_RUNS
    assert abs(after - baseline) <= RSS_TOLERANCE * baseline, (baseline, after)


def test_an_out_of_memory_error_in_sampling_says_what_to_change_and_frees_the_memory(server, record_property):
    completed_run(server, "sampling", seed=1)
    before = server.settled_rss_kib()
    armed, _ = server.run_prompt({"1": {"class_type": "LanceTestArmSamplerOOM", "inputs": {}}}, timeout=60)
    assert armed["outputs"]["1"]["text"] == ["armed 1"]

    graph, sampler = t2i(steps=3, side=32, seed=7)
    entry, messages = server.run_prompt(graph.prompt, timeout=TIMEOUT_S)
    (error,) = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert error["node_id"] == sampler and error["exception_type"].endswith(".LanceOutOfMemoryError")
    assert error["exception_message"] == (
        "Lance Sampler ran out of memory on a 32x32 px latent of 1 latent frame(s) (CUDA out of memory. Tried to "
        "allocate 20.00 GiB (injected by LanceTestArmSamplerOOM)); use a smaller width/height or fewer frames, load "
        "the checkpoint with weight_dtype fp8_e4m3fn, and decode with VAE Decode (Tiled)\n"
        # ComfyUI's own tips follow every out-of-memory error
        "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you might have "
        "accidentally set the batch_size to a large number.")
    assert progress_values(messages, sampler) == [1], "the error must come from inside sampling, after its first step"
    assert "Got an OOM, unloading all loaded models." in server.log_text()

    completed_run(server, "sampling", seed=2)
    after = server.settled_rss_kib()
    record_property("RSS before / after the out-of-memory run (MiB)", (round(before / 1024, 1), round(after / 1024, 1)))
    assert after <= (1 + RSS_TOLERANCE) * before, (before, after)
