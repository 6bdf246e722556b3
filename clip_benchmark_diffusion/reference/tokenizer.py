"""An offline `transformers.CLIPTokenizer` built from the BPE merges that open_clip ships.

Stable Diffusion pipelines expect a Hugging Face CLIP tokenizer folder (vocab.json +
merges.txt). No hub is reachable, but the merges file of OpenAI's CLIP vocabulary is inside
the open_clip package, and CLIP's 49408-token vocabulary is a deterministic function of it.
Building it here (instead of inventing a toy vocabulary) keeps the token ids identical to
`open_clip.get_tokenizer(...)`, so the reference CLIP and diffusion models share one vocabulary.
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile

from transformers import CLIPTokenizer

#: Number of merges CLIP keeps: 49152 BPE symbols minus the 256 byte symbols minus two specials.
NUM_MERGES = 49152 - 256 - 2
#: Size of CLIP's vocabulary (bytes, bytes + "</w>", merges, two special tokens).
VOCAB_SIZE = 49408
#: Context length used by the reference models: world captions are at most ~10 tokens.
MODEL_MAX_LENGTH = 16
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def open_clip_bpe_path() -> str:
    """Path of `bpe_simple_vocab_16e6.txt.gz` inside the installed open_clip package."""
    import open_clip

    return os.path.join(os.path.dirname(os.path.abspath(open_clip.__file__)), "bpe_simple_vocab_16e6.txt.gz")


def _bytes_to_unicode() -> list[str]:
    """CLIP/GPT-2 byte alphabet: printable bytes keep their character, the rest are shifted past 255.

    The order matters: it fixes the ids of the first 256 tokens.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + shifted)
            shifted += 1
    return [chr(code) for code in codes]


def clip_merges_and_vocab(bpe_path: str | None = None) -> tuple[list[str], dict[str, int]]:
    """Return CLIP's merges (as "a b" lines) and its token -> id vocabulary."""
    with gzip.open(bpe_path or open_clip_bpe_path()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]  # line 0 is the "#version" header
    alphabet = _bytes_to_unicode()
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"expected {VOCAB_SIZE} CLIP tokens, built {len(vocab)} from {bpe_path}")
    return merges, vocab


def write_clip_vocab_files(directory: str, bpe_path: str | None = None) -> None:
    """Write vocab.json and merges.txt in the layout of OpenAI's Hugging Face CLIP repositories."""
    merges, vocab = clip_merges_and_vocab(bpe_path)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as handle:
        json.dump(vocab, handle, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as handle:
        handle.write("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_clip_tokenizer(model_max_length: int = MODEL_MAX_LENGTH) -> CLIPTokenizer:
    """A genuine `CLIPTokenizer` (padding with <|endoftext|>, like Stable Diffusion's), built offline."""
    with tempfile.TemporaryDirectory() as directory:
        write_clip_vocab_files(directory)
        return CLIPTokenizer(
            vocab=os.path.join(directory, "vocab.json"),
            merges=os.path.join(directory, "merges.txt"),
            model_max_length=model_max_length,
        )


def save_clip_tokenizer(directory: str, model_max_length: int = MODEL_MAX_LENGTH) -> None:
    """Write a tokenizer folder (vocab.json, merges.txt, tokenizer_config.json) that any
    transformers version loads with `CLIPTokenizer.from_pretrained(directory)`."""
    write_clip_vocab_files(directory)
    config = {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
        "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN,
        "do_lower_case": True, "clean_up_tokenization_spaces": False,
    }
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2)


#: Whole-word pieces of the reference T5 tokenizer: the world's caption vocabulary, the words of
#: common zero-shot templates, and punctuation; anything else falls back to single letters.
T5_WORDS: tuple[str, ...] = tuple(
    "a an and object circle square triangle star cross heart red orange yellow green blue purple "
    "photo picture image of the this is".split())


def build_t5_tokenizer(model_max_length: int = MODEL_MAX_LENGTH):
    """A genuine T5 (Unigram) tokenizer over `T5_WORDS` plus single letters, built offline.

    Real T5's 32k-piece sentencepiece model is not reachable here and is far larger than the
    reference model needs; a Unigram model from (piece, score) pairs is what transformers builds
    T5 tokenizers from, so the shipped folder loads with `T5TokenizerFast.from_pretrained`.
    """
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + word, -5.0) for word in T5_WORDS]
    pieces += [(char, -8.0) for char in "abcdefghijklmnopqrstuvwxyz0123456789.,'-"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)
