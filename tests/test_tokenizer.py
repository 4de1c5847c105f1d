"""LanceTokenizer reproduces the reference's token ids (golden sequences, and an independent
re-implementation of the slow Qwen2Tokenizer algorithm on the real Qwen2.5 vocabulary)."""
from __future__ import annotations

import json
import os
import shutil
import unicodedata
from pathlib import Path

import pytest
import regex
from safetensors.torch import load_file

from lance_model.checkpoint import SPECIAL_TOKEN_FIELDS
from lance_model.config import LLMConfig
from lance_model.tokenizer import LanceTokenizer, TokenizerError

GENERATION_TASKS = ("t2i", "t2v", "i2v", "image_edit", "video_edit")
GOLDEN_TASKS = GENERATION_TASKS + ("x2t_image", "x2t_video")

MULTILINGUAL = (
    "Describe the user’s photo: “a cat” — it’s on the sofa…",
    "Ein großer Hund läuft über die Straße; Füße, Öl, Ärger.",
    "Le garc\u0327on mange une pomme a\u0300 la cafe\u0301te\u0301ria.",  # combining marks: NFC composes them
    "一只小猫坐在窗台上看着外面的雨。",
    "青い空と白い雲、そしてﾃｽﾄ。",
    "한국어 문장도 처리합니다.",
    "Большая собака бежит по полю.",
    "مرحبا بالعالم",
    "Emoji 🚀🎬 and flags 🇫🇷, numbers 12345 and 3.14159",
    "I'LL say don't, we've, they're\tand\ttabs   \n\n  trailing   ",
    "<|im_start|>user\nHallo<|im_end|>\n<|vision_start|><|video_pad|><|vision_end|><tool_call>",
)


def _golden_sequence(golden_dir: Path, task: str) -> list[int]:
    return load_file(golden_dir / task / "tensors.safetensors")["seq.packed_text_ids"].tolist()


def _settings(golden_dir: Path, task: str) -> dict:
    return json.loads((golden_dir / task / "settings.json").read_text(encoding="utf-8"))


def _text_runs(ids: list[int], placeholder: int) -> list[list[int]]:
    """The text between visual placeholders (each text run was tokenised from a string)."""
    runs, current = [], []
    for token in ids:
        if token == placeholder:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(token)
    return runs + ([current] if current else [])


@pytest.fixture(scope="module")
def golden_tokenizer(golden_dir) -> LanceTokenizer:
    return LanceTokenizer.from_dir(golden_dir / "ckpt" / "Lance_tiny")


@pytest.fixture(scope="module")
def qwen_vocab_dir() -> Path:
    """The real Qwen2.5 vocabulary (vocab.json + merges.txt) that ships inside ComfyUI."""
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        pytest.fail("COMFYUI_PATH is not set; it must name the ComfyUI checkout used by the tests")
    return Path(root) / "comfy" / "text_encoders" / "qwen25_tokenizer"


@pytest.mark.parametrize("task", GOLDEN_TASKS)
def test_decode_reproduces_reference_sequence_text(golden_tokenizer, golden_dir, task):
    ids = _golden_sequence(golden_dir, task)
    assert golden_tokenizer.decode(ids) == _settings(golden_dir, task)["decoded_text_of_sequence"]


@pytest.mark.parametrize("task", GOLDEN_TASKS)
def test_text_runs_reencode_to_reference_ids(golden_tokenizer, golden_dir, task):
    ids = _golden_sequence(golden_dir, task)
    runs = _text_runs(ids, golden_tokenizer.token_id("<|video_pad|>"))
    assert runs
    for run in runs:
        assert golden_tokenizer.encode(golden_tokenizer.decode(run)) == run


@pytest.mark.parametrize("task", GENERATION_TASKS)  # x2t "captions" hold system prompt, question and answer
def test_standalone_caption_appears_in_reference_sequence(golden_tokenizer, golden_dir, task):
    ids = _golden_sequence(golden_dir, task)
    caption = golden_tokenizer.encode(_settings(golden_dir, task)["caption"])
    assert any(ids[i:i + len(caption)] == caption for i in range(len(ids) - len(caption) + 1))


def test_edit_system_prompt_keeps_typographic_apostrophe(golden_tokenizer, golden_dir):
    text = golden_tokenizer.decode(_golden_sequence(golden_dir, "image_edit"))
    assert "user\u2019s text instruction" in text


def test_length_and_added_token_ids_match_reference(golden_tokenizer, golden_dir):
    reference = json.loads((golden_dir / "ckpt" / "tiny_config.json").read_text())["tokenizer"]
    assert len(golden_tokenizer) == reference["len_tokenizer"]
    assert {name: golden_tokenizer.token_id(name) for name in reference["added_token_ids"]} == \
        reference["added_token_ids"]


@pytest.mark.parametrize("folder", ["Lance_tiny", "Lance_tiny_Video"])
def test_special_ids_agree_with_llm_config(golden_dir, folder):
    tokenizer = LanceTokenizer.from_dir(golden_dir / "ckpt" / folder)
    cfg = LLMConfig.from_file(golden_dir / "ckpt" / folder / "llm_config.json")
    for field, token in SPECIAL_TOKEN_FIELDS:
        assert tokenizer.token_id(token) == getattr(cfg, field), field


@pytest.mark.parametrize("text", MULTILINGUAL)
def test_decode_inverts_encode_up_to_nfc(golden_tokenizer, text):
    assert golden_tokenizer.decode(golden_tokenizer.encode(text)) == unicodedata.normalize("NFC", text)


def test_nfc_normalisation_before_bpe(golden_tokenizer):
    assert golden_tokenizer.encode("cafe\u0301") == golden_tokenizer.encode("caf\u00e9")


def test_special_token_strings_map_to_their_ids(golden_tokenizer):
    tok = golden_tokenizer
    ids = tok.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids == [tok.token_id("<|im_start|>"), *tok.encode("user\nHi"), tok.token_id("<|im_end|>")]


def test_skip_special_tokens_keeps_non_special_added_tokens(golden_tokenizer):
    tok = golden_tokenizer
    ids = tok.encode("<|im_start|>assistant\n<tool_call>x<|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<tool_call>x"


def test_vocab_and_merges_give_the_same_ids_as_tokenizer_json(golden_tokenizer, golden_dir, tmp_path):
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(golden_dir / "ckpt" / "Lance_tiny" / name, tmp_path / name)
    rebuilt = LanceTokenizer.from_dir(tmp_path)
    assert rebuilt.source == str(tmp_path / "vocab.json")
    assert len(rebuilt) == len(golden_tokenizer)
    for text in MULTILINGUAL:
        assert rebuilt.encode(text) == golden_tokenizer.encode(text)


def test_token_id_error_names_token_and_file(golden_tokenizer, golden_dir):
    with pytest.raises(TokenizerError) as err:
        golden_tokenizer.token_id("<|audio_pad|>")
    assert str(err.value) == f"{golden_dir / 'ckpt' / 'Lance_tiny' / 'tokenizer.json'}: token '<|audio_pad|>' " \
                             "is not in the vocabulary"


def test_decode_refuses_ids_beyond_the_vocabulary(golden_tokenizer):
    n = len(golden_tokenizer)
    with pytest.raises(TokenizerError) as err:
        golden_tokenizer.decode([5, n, n + 3])
    assert str(err.value) == (f"{golden_tokenizer.source}: cannot decode ids [{n}, {n + 3}] (vocabulary has {n} "
                              "tokens; logits of larger ids must be masked before sampling)")


def test_missing_tokenizer_files_are_named(tmp_path):
    with pytest.raises(TokenizerError) as err:
        LanceTokenizer.from_dir(tmp_path)
    assert str(err.value) == (f"{tmp_path}: no tokenizer found; expected tokenizer.json (or vocab.json + "
                              "merges.txt) from the Lance model folder")


def test_real_qwen_vocabulary_known_ids(qwen_tokenizers):
    tok, _ = qwen_tokenizers
    # ids listed in spec §2.8 (standard Qwen2.5 vocabulary)
    assert [tok.encode(word) for word in ("system", "user", "assistant", "\n")] == [[8948], [872], [77091], [198]]
    assert [tok.token_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                      "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")] == \
        [151643, 151644, 151645, 151652, 151653, 151655, 151656]


# --- an independent, deliberately naive version of the slow Qwen2Tokenizer ---------------------------

_QWEN2_PATTERN = regex.compile(r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
                               r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def _byte_symbols() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return symbols


class SlowQwen2:
    def __init__(self, folder: Path):
        self.vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        self.ranks = {tuple(line.split(" ")): i for i, line in enumerate(l for l in lines if l and l[0] != "#")}
        added = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))["added_tokens_decoder"]
        self.added = {spec["content"]: int(i) for i, spec in added.items()}
        self.symbols = _byte_symbols()

    def _bpe(self, word: list[str]) -> list[str]:
        while len(word) > 1:
            pairs = [(self.ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(word, word[1:]))]
            rank, i = min(pairs)
            if rank == float("inf"):
                break
            first, second = word[i], word[i + 1]
            merged, j = [], 0
            while j < len(word):
                if j < len(word) - 1 and word[j] == first and word[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(word[j])
                    j += 1
            word = merged
        return word

    def encode(self, text: str) -> list[int]:
        text = unicodedata.normalize("NFC", text)
        splitter = "(" + "|".join(regex.escape(t) for t in sorted(self.added, key=len, reverse=True)) + ")"
        ids = []
        for chunk in regex.split(splitter, text):
            if chunk in self.added:
                ids.append(self.added[chunk])
                continue
            for piece in _QWEN2_PATTERN.findall(chunk):
                word = [self.symbols[b] for b in piece.encode("utf-8")]
                ids.extend(self.vocab[token] for token in self._bpe(word))
        return ids


@pytest.fixture(scope="module")
def qwen_tokenizers(qwen_vocab_dir) -> tuple[LanceTokenizer, SlowQwen2]:
    return LanceTokenizer.from_dir(qwen_vocab_dir), SlowQwen2(qwen_vocab_dir)


@pytest.mark.parametrize("text", MULTILINGUAL)
def test_real_vocabulary_matches_naive_slow_tokenizer(qwen_tokenizers, text):
    fast, slow = qwen_tokenizers
    assert fast.encode(text) == slow.encode(text)


@pytest.mark.parametrize("text", MULTILINGUAL)
def test_golden_vocabulary_matches_naive_slow_tokenizer(golden_tokenizer, golden_dir, text):
    assert golden_tokenizer.encode(text) == SlowQwen2(golden_dir / "ckpt" / "Lance_tiny").encode(text)
