"""The incremental decoder reads a bounded window of ids, yet streams exactly what decoding every id
so far streams (the reference below, the decoder as it was), for byte-level BPE with multi-byte
characters and for a SentencePiece-style decoder that drops a window's leading space."""

from __future__ import annotations

import random

import pytest
from transformers import PreTrainedTokenizerFast

from saffron_runtime.search.decode import REPLACEMENT, IncrementalDecoder, decode, final_text
from saffron_runtime.testing import tiny_tokenizer

TEXTS = [
    "héllo wörld, ça va? 🙂 naïve façade — ✓ done.\n\n  spaced   out",
    "日本語のテキストと emoji 🎉🎉 mixed with ascii words and 123 numbers",
    "plain ascii text that goes on for a while, with punctuation; and more!",
]


class ReferenceDecoder:
    """The decoder as it was: decode every id on every push."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.ids, self.emitted = tokenizer, [], ""

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        text = decode(self.tokenizer, self.ids)
        stable = text.rstrip(REPLACEMENT) if text.endswith(REPLACEMENT) else text
        if not stable.startswith(self.emitted):
            return ""
        delta, self.emitted = stable[len(self.emitted) :], stable
        return delta

    def finish(self) -> str:
        text = final_text(self.tokenizer, self.ids)
        delta = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text
        return delta


def _metaspace_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"])
    tok.train_from_iterator([TEXTS[2]] * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.mark.parametrize("kind", ["byte-level", "metaspace"])
def test_windowed_decoder_streams_what_decoding_everything_streams(kind):
    tok = tiny_tokenizer() if kind == "byte-level" else _metaspace_tokenizer()
    texts = TEXTS if kind == "byte-level" else TEXTS[2:]
    rng = random.Random(0)
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for _ in range(5):
            new, ref = IncrementalDecoder(tok), ReferenceDecoder(tok)
            i = 0
            while i < len(ids):
                n = rng.choice([1, 1, 1, 2, 3])
                assert new.push(ids[i : i + n]) == ref.push(ids[i : i + n])
                i += n
            assert new.finish() == ref.finish()
            assert new.emitted == ref.emitted == final_text(tok, ids)


def test_the_window_stays_short():
    tok = tiny_tokenizer()
    ids = tok(TEXTS[2] * 8, add_special_tokens=False)["input_ids"]
    dec = IncrementalDecoder(tok)
    for t in ids:
        dec.push([t])
        assert len(dec.ids) - dec._start <= 4  # never every id so far
