"""The default model's text side: a word-level tokenizer built from the training captions and a tiny transformer.

Self-contained on purpose: no downloaded vocabulary or weights. Words are lower-cased and split on anything that is not a
letter, digit, hyphen or a ``<new-token>`` in angle brackets, so "flag: Japan" and "flag japan" tokenize alike, and a
customisation token such as ``<v1>`` stays one word. Unknown prompt words map to ``<unk>`` with a warning naming them.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter

import torch
from torch import nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
_WORD = re.compile(r"<[^<>\s]+>|[0-9a-z\u00c0-\uffff]+(?:[-'][0-9a-z\u00c0-\uffff]+)*")


def split_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Maps prompts to fixed-length id sequences ``<bos> w1 … wn <eos> <pad> …`` (truncated to ``max_length``)."""

    vocab_file = "vocab.json"

    def __init__(self, vocab: list[str], max_length: int = 16):
        if list(vocab[: len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS):
            raise ValueError(f"vocabulary must start with the special tokens {SPECIAL_TOKENS}, got {vocab[:4]}")
        self.vocab = list(vocab)
        self.index = {word: i for i, word in enumerate(self.vocab)}
        self.max_length = max_length
        self._warned: set[str] = set()

    @classmethod
    def from_captions(cls, captions, max_length: int = 16, min_count: int = 1) -> "WordTokenizer":
        counts = Counter(word for caption in captions for word in split_words(caption))
        words = sorted(word for word, count in counts.items() if count >= min_count)
        return cls([*SPECIAL_TOKENS, *words], max_length)

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return self.index[PAD]

    def add_tokens(self, tokens: list[str]) -> list[int]:
        """Add new words (e.g. ``<v1>`` for a customised concept); returns their ids. Existing words keep their id."""
        ids = []
        for token in tokens:
            word = token.lower()
            if split_words(word) != [word]:
                raise ValueError(f"token {token!r} is not a single word; use letters/digits or <angle-brackets>")
            if word not in self.index:
                self.index[word] = len(self.vocab)
                self.vocab.append(word)
            ids.append(self.index[word])
        return ids

    def unknown_words(self, prompt: str) -> list[str]:
        return [word for word in split_words(prompt) if word not in self.index]

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        ids = torch.full((len(prompts), self.max_length), self.index[PAD], dtype=torch.long)
        for row, prompt in enumerate(prompts):
            unknown = [w for w in self.unknown_words(prompt) if w not in self._warned]
            if unknown:
                self._warned.update(unknown)
                warnings.warn(f"prompt {prompt!r}: unknown word(s) {unknown} (not in the model's vocabulary of "
                              f"{len(self)} words); they are read as {UNK}", stacklevel=2)
            words = [self.index.get(word, self.index[UNK]) for word in split_words(prompt)]
            sequence = [self.index[BOS], *words[: self.max_length - 2], self.index[EOS]]
            ids[row, : len(sequence)] = torch.tensor(sequence)
        return ids

    def save_pretrained(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, self.vocab_file), "w", encoding="utf-8") as handle:
            json.dump({"max_length": self.max_length, "vocab": self.vocab}, handle, ensure_ascii=False, indent=0)

    @classmethod
    def from_pretrained(cls, folder: str) -> "WordTokenizer":
        path = os.path.join(folder, cls.vocab_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: missing (a WordTokenizer folder holds vocab.json)")
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return cls(data["vocab"], data["max_length"])


class WordTextEncoder(ModelMixin, ConfigMixin):
    """Token + position embeddings, a few pre-norm transformer layers, a final LayerNorm: (B, L) ids → (B, L, dim)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, vocab_size: int, max_length: int = 16, dim: int = 64, num_layers: int = 2, num_heads: int = 4,
                 pad_id: int = 0):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, dim))
        layer = nn.TransformerEncoderLayer(dim, num_heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.token_embedding(input_ids) + self.position_embedding[: input_ids.shape[1]]
        hidden = self.layers(hidden, src_key_padding_mask=input_ids == self.config.pad_id)
        return self.final_norm(hidden)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding table (transformers' name for it)."""
        return self.token_embedding

    def resize_token_embeddings(self, vocab_size: int) -> None:
        """Grow the vocabulary (new rows start at the mean embedding, a neutral word)."""
        old = self.token_embedding
        if vocab_size <= old.num_embeddings:
            return
        new = nn.Embedding(vocab_size, old.embedding_dim).to(old.weight)
        with torch.no_grad():
            new.weight[: old.num_embeddings] = old.weight
            new.weight[old.num_embeddings:] = old.weight.mean(0)
        self.token_embedding = new
        self.register_to_config(vocab_size=vocab_size)
