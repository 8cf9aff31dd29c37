"""GPT-2 BPE tokenizer built from the files this package ships, so it never needs the network."""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

EOT_TOKEN = 50256  # <|endoftext|>: llm.c's shards start every document with it.
VOCAB_SIZE = 50257  # real GPT-2 vocabulary; the model pads its embedding to 50304.

# tiktoken's published SHA-256 hashes of OpenAI's files (tiktoken_ext/openai_public.py).
_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """tiktoken's `gpt2` encoding, from the shipped vocab.bpe/encoder.json (hash-checked)."""
    assets = resources.files("gpt2_jax") / "assets"
    with resources.as_file(assets / "vocab.bpe") as bpe, resources.as_file(
        assets / "encoder.json"
    ) as enc:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(bpe),
            encoder_json_file=str(enc),
            vocab_bpe_hash=_VOCAB_BPE_SHA256,
            encoder_json_hash=_ENCODER_JSON_SHA256,
        )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=VOCAB_SIZE,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT_TOKEN},
    )


def encode(text: str) -> list[int]:
    """Ordinary text to token ids (special tokens in the text are encoded as plain text)."""
    return get_tokenizer().encode_ordinary(text)


def tokenize_document(text: str) -> np.ndarray:
    """<|endoftext|> then the document's tokens, as uint16 (llm.c's shards: every document
    starts with the end-of-text token)."""
    return np.array([EOT_TOKEN, *encode(text)], dtype=np.uint16)


def decode(tokens) -> str:
    return get_tokenizer().decode(list(tokens))


def shipped_text(name: str = "tinyshakespeare.txt") -> str:
    """A small English text shipped with the package (used by the default config and tests)."""
    return (resources.files("gpt2_jax") / "assets" / name).read_text(encoding="utf-8")
