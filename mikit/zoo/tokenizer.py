"""The zoo's character-level tokenizer: one token per character, so attention plots read as text."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<|bos|>"
UNK_TOKEN = "<|unk|>"
CHARACTERS = "\n" + "".join(chr(code) for code in range(32, 127))  # newline + printable ASCII
VOCAB = {BOS_TOKEN: 0, UNK_TOKEN: 1, **{char: i + 2 for i, char in enumerate(CHARACTERS)}}
FIRST_CHAR_ID = 2  # ids below this are special tokens, never drawn as random characters


def char_backend() -> Tokenizer:
    """The `tokenizers` pipeline over `VOCAB`: one token per character, BOS first, decoded without spaces."""
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token=UNK_TOKEN))
    # `[\s\S]` matches every character, newline included, so each becomes its own "word".
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B", special_tokens=[(BOS_TOKEN, VOCAB[BOS_TOKEN])]
    )
    return backend


def build_char_tokenizer(model_max_length: int) -> PreTrainedTokenizerFast:
    """`char_backend` as a Hugging Face tokenizer, which is what TransformerLens takes."""
    # BOS doubles as EOS and padding, as in GPT-2, so TransformerLens invents no token outside the vocab.
    return PreTrainedTokenizerFast(
        tokenizer_object=char_backend(),
        bos_token=BOS_TOKEN,
        eos_token=BOS_TOKEN,
        pad_token=BOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def load_char_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """Load the tokenizer saved in `folder`; its `name_or_path` is that folder, as TransformerLens needs."""
    return PreTrainedTokenizerFast.from_pretrained(str(folder))
