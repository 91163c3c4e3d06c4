"""A small text tokenizer built locally, for backbones created from a config (tiny VLA).

A model built with `from_config` has no pretrained tokenizer, and nothing may be downloaded, so
we train a byte-level BPE with the `tokenizers` library on the prompt template and the robot's
task instructions (plus a few generic manipulation words). Byte-level means any instruction can
be encoded (unknown words fall back to bytes); the merges only make the known ones short. The
tokenizer is saved into every checkpoint, so a model is never paired with a different one.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
IMAGE = "<image>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IMAGE]

_GENERIC_WORDS = (
    "pick up the cube block object place it put on in into the box bowl tray push pull open close the drawer "
    "door lid lift stack move to left right front back red green blue yellow white black small large "
    "grasp release rotate turn press button insert peg hole square stick"
)


def build_byte_bpe_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` (deterministic for a given corpus and size)."""
    minimum = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(
            f"a byte-level tokenizer needs vocab_size >= {minimum} (256 bytes + special tokens), got "
            f"{vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([*corpus, _GENERIC_WORDS], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
    )
