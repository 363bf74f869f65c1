"""Cosine similarity of pretrained embeddings (CLIP, DINO, DINOv2...): the usual "similar-looking" baseline.

Attribution papers compare against retrieval by feature similarity: a training image scores high when an off-the-shelf
encoder places it near the query. This is cheap and often strong on near-copies, but it measures resemblance, not
influence, which is what AbU is judged against. The encoder is any transformers model folder on local disk (nothing is
ever downloaded): a CLIP-style model (``get_image_features`` / ``get_text_features``) compares the query image with
training images, or the query prompt with training captions; an image backbone (ViT / DINO / DINOv2) uses its CLS
token. Training images are read as the diffusion model sees them (centre crop, model resolution, like the query), fed
to the encoder's own image processor, and streamed in batches, so the set's size is limited by disk, not memory.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..data.dataset import load_pixels
from ..errors import SettingsError
from .base import AttributionMethod

MODALITIES = ("image", "text")


@dataclass
class FeatureSimilarity(AttributionMethod):
    """encoder: a local transformers model folder; modality: "image" (query image vs training images) or "text"
    (query prompt vs training captions; an image's score is the mean cosine over its captions)."""

    encoder: str
    modality: str = "image"
    batch_size: int = 256  # encoder inputs per forward pass: memory only
    name = "feature"
    title = "Feature similarity"
    score_meaning = "cosine similarity of the encoder's embeddings (CLIP or DINO) of query and image"

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise SettingsError(f"feature similarity: modality must be one of {MODALITIES}, got {self.modality!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SettingsError(f"feature similarity: batch_size must be a positive integer, got {self.batch_size!r}")
        self._loaded = None  # (encoder, modality, model, processor, device): loaded on first use, not a setting

    def settings(self) -> dict:
        folder = os.path.abspath(self.encoder)
        with open(self._config_path(), "rb") as config:
            digest = hashlib.sha256(config.read()).hexdigest()[:16]
        return {"encoder": folder, "modality": self.modality, "encoder_config": digest}

    def _config_path(self) -> str:
        path = os.path.join(self.encoder, "config.json")
        if not os.path.isfile(path):
            problem = "does not exist" if not os.path.exists(self.encoder) else "has no config.json"
            raise SettingsError(f"feature encoder {self.encoder} {problem}: expected a transformers model folder "
                                f"(one written by save_pretrained)")
        return path

    def _load(self, workspace):
        if self._loaded is None or self._loaded[:2] != (self.encoder, self.modality):
            from transformers import AutoImageProcessor, AutoModel, AutoTokenizer  # slow import: only when used

            self._config_path()
            text = self.modality == "text"
            model = self._from_folder(AutoModel).eval()
            if text and not hasattr(model, "get_text_features"):
                raise SettingsError(f"feature encoder {self.encoder} ({type(model).__name__}) has no text encoder: "
                                    f"use modality='image' or a CLIP-style model")
            processor = self._from_folder(AutoTokenizer if text else AutoImageProcessor)
            device = getattr(getattr(workspace, "model", None), "device", None)
            device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
            self._loaded = (self.encoder, self.modality, model.to(device), processor, device)
        return self._loaded[2:]

    def _from_folder(self, auto):
        try:
            return auto.from_pretrained(self.encoder, local_files_only=True)
        except (OSError, ValueError, KeyError) as error:  # what transformers raises for a folder it cannot read
            raise SettingsError(f"feature encoder {self.encoder} cannot be loaded with transformers "
                                f"({auto.__name__}): {type(error).__name__}: {error}") from error

    @torch.inference_mode()
    def _embed(self, workspace, inputs: list) -> np.ndarray:
        """Unit-norm embeddings (len(inputs), D) float32 of PIL images or strings, batch_size at a time."""
        model, processor, device = self._load(workspace)
        rows = []
        for start in range(0, len(inputs), self.batch_size):
            batch = inputs[start:start + self.batch_size]
            if self.modality == "text":
                limit = getattr(getattr(model.config, "text_config", model.config), "max_position_embeddings", None)
                tokens = processor(batch, padding=True, truncation=True, max_length=limit, return_tensors="pt")
                out = model.get_text_features(**tokens.to(device))
            else:
                pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
                if hasattr(model, "get_image_features"):
                    out = model.get_image_features(pixel_values=pixels)
                else:
                    out = model(pixel_values=pixels)
                    hidden = out.last_hidden_state  # (B, tokens, D) for ViTs: the CLS token is the image embedding
                    out = hidden[:, 0] if hidden is not None and hidden.ndim == 3 else out.pooler_output.flatten(1)
            out = out if torch.is_tensor(out) else out.pooler_output  # transformers >= 5 returns a ModelOutput
            rows.append(torch.nn.functional.normalize(out.float(), dim=-1).cpu().numpy())
        return np.concatenate(rows)

    def image_similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """Cosine between the embeddings of two uint8 (H, W, 3) images (the evaluation's feature distance)."""
        first, second = self._embed(None, [Image.fromarray(a), Image.fromarray(b)])
        return float(first @ second)

    def score(self, workspace, queries) -> np.ndarray:
        dataset, n = workspace.dataset, len(workspace.dataset)
        scores = np.empty((len(queries), n), dtype=np.float32)
        if self.modality == "text":
            query = self._embed(workspace, [q.prompt for q in queries])
            for start in range(0, n, self.batch_size):
                captions = [dataset.captions(i) for i in range(start, min(start + self.batch_size, n))]
                flat = self._embed(workspace, [c for group in captions for c in group])
                counts = np.array([len(group) for group in captions])  # every image has at least one caption
                mean = np.add.reduceat(flat, np.cumsum(counts) - counts, axis=0) / counts[:, None].astype(np.float32)
                scores[:, start:start + len(captions)] = query @ mean.T
            return scores
        resolution = workspace.model.resolution
        query = self._embed(workspace, [Image.fromarray(q.image) for q in queries])
        for start in range(0, n, self.batch_size):
            pixels = load_pixels(dataset, resolution, range(start, min(start + self.batch_size, n)))
            train = self._embed(workspace, [Image.fromarray(p) for p in pixels])
            scores[:, start:start + len(pixels)] = query @ train.T
        return scores
