"""The text side of a model: prompt strings to a conditioning tensor, and how many tokens the encoder reads.

Its own module so that the adapter, the folder loader and the tiny default all build on it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .text_encoder import WordTextEncoder, WordTokenizer, split_words


@dataclass
class TextSide:
    """Prompt strings → conditioning tensor (B, L, D); ``tokenizer`` and ``encoder`` are kept for saving and training.
    token_counts(prompts): each prompt's length in tokens before truncation; max_tokens: what the encoder keeps."""

    tokenizer: Callable
    encoder: nn.Module
    encode: Callable[[list[str]], torch.Tensor]
    token_counts: Callable[[list[str]], list[int]] | None = None
    max_tokens: int | None = None


def word_text_side(tokenizer: WordTokenizer, encoder: WordTextEncoder) -> TextSide:
    """The default model's text side: word-level tokenizer + tiny transformer (text_encoder.py)."""
    def encode(prompts: list[str]):
        ids = tokenizer(prompts).to(encoder.device)
        return encoder(ids)

    def token_counts(prompts: list[str]) -> list[int]:
        return [len(split_words(prompt)) + 2 for prompt in prompts]  # + <bos> and <eos>

    return TextSide(tokenizer=tokenizer, encoder=encoder, encode=encode, token_counts=token_counts,
                    max_tokens=tokenizer.max_length)
