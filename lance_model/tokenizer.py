"""The Qwen2.5 byte-level BPE tokenizer of Lance, through the ``tokenizers`` library only.

The reference loads the slow ``Qwen2Tokenizer`` (``vocab.json`` + ``merges.txt``): NFC
normalisation, Qwen2's pre-tokenizer regex, GPT-2 byte map, BPE, and the added tokens
(``<|im_start|>`` ...) matched verbatim before normalisation. ``tokenizer.json`` describes the same
pipeline, so it is read when present; a folder with only ``vocab.json`` + ``merges.txt`` (what
the reference itself needs) is rebuilt into the same pipeline with ``qwen2_pipeline``.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

TOKENIZER_JSON = "tokenizer.json"
VOCAB_JSON = "vocab.json"
MERGES_TXT = "merges.txt"
TOKENIZER_CONFIG_JSON = "tokenizer_config.json"

# Qwen2's pre-tokenizer split: contractions, letter runs with one leading non-letter, single
# digits, punctuation runs, newline runs, and whitespace (trailing spaces stay with the next word).
QWEN2_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                       r"|\s*[\r\n]+|\s+(?!\S)|\s+")


class TokenizerError(ValueError):
    """The tokenizer files are missing or inconsistent, or a token is not in the vocabulary."""


def qwen2_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    """Give a BPE ``Tokenizer`` the Qwen2 normaliser, pre-tokenizer and byte-level decoder."""
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#version"):
            left, _, right = line.partition(" ")
            merges.append((left, right))
    return merges


def _added_tokens(config_path: Path) -> list[tuple[int, AddedToken]]:
    if not config_path.is_file():
        return []
    decoder = json.loads(config_path.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
    return sorted(
        (int(token_id), AddedToken(spec["content"], special=bool(spec.get("special", False)), normalized=False,
                                   lstrip=bool(spec.get("lstrip")), rstrip=bool(spec.get("rstrip")),
                                   single_word=bool(spec.get("single_word"))))
        for token_id, spec in decoder.items())


def _from_vocab_and_merges(folder: Path) -> Tokenizer:
    vocab = json.loads((folder / VOCAB_JSON).read_text(encoding="utf-8"))
    tokenizer = qwen2_pipeline(Tokenizer(models.BPE(vocab=vocab, merges=read_merges(folder / MERGES_TXT))))
    for token_id, token in _added_tokens(folder / TOKENIZER_CONFIG_JSON):
        tokenizer.add_tokens([token])
        if tokenizer.token_to_id(token.content) != token_id:
            raise TokenizerError(
                f"{folder / TOKENIZER_CONFIG_JSON}: added token {token.content!r} is declared with id {token_id} "
                f"but follows the vocabulary at id {tokenizer.token_to_id(token.content)}")
    return tokenizer


class LanceTokenizer:
    def __init__(self, tokenizer: Tokenizer, source: str):
        self._tokenizer = tokenizer
        self.source = source

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "LanceTokenizer":
        folder = Path(model_dir)
        if (folder / TOKENIZER_JSON).is_file():
            try:
                return cls(Tokenizer.from_file(str(folder / TOKENIZER_JSON)), str(folder / TOKENIZER_JSON))
            except Exception as e:  # the Rust side raises a bare Exception for malformed files
                raise TokenizerError(f"{folder / TOKENIZER_JSON}: cannot be read ({e})") from None
        if (folder / VOCAB_JSON).is_file() and (folder / MERGES_TXT).is_file():
            return cls(_from_vocab_and_merges(folder), str(folder / VOCAB_JSON))
        raise TokenizerError(f"{folder}: no tokenizer found; expected {TOKENIZER_JSON} "
                             f"(or {VOCAB_JSON} + {MERGES_TXT}) from the Lance model folder")

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        unknown = [i for i in ids if not 0 <= i < len(self)]
        if unknown:
            raise TokenizerError(f"{self.source}: cannot decode ids {unknown[:8]} (vocabulary has {len(self)} "
                                 "tokens; logits of larger ids must be masked before sampling)")
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"{self.source}: token {token!r} is not in the vocabulary")
        return token_id

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)
