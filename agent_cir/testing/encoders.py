"""A deterministic encoder with no model, for protocol tests and benchmarks of the retrieval logic."""

from __future__ import annotations

import re
import zlib

import numpy as np

from agent_cir.fusion import normalise


class BagOfWordsEncoder:
    """A deterministic text encoder for protocol tests: each word hashes to a fixed random direction.

    Texts that share words get a high cosine, which is all the gallery/pipeline logic needs. Images are
    encoded from their mean colour so that image paths are exercised without a vision model.
    """

    dim = 64

    def __init__(self) -> None:
        self.info = {"backend": "test-bag-of-words", "model": "bow-64", "dim": self.dim}
        self.text_calls = 0
        self.image_calls = 0

    def _word(self, word: str) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(word.encode()))
        return rng.standard_normal(self.dim).astype(np.float32)

    def encode_texts(self, texts, batch_size=None):
        self.text_calls += 1
        rows = []
        for text in texts:
            words = re.findall(r"[a-z]+", text.lower()) or ["<empty>"]
            rows.append(np.sum([self._word(w) for w in words], axis=0))
        return normalise(np.stack(rows))

    def encode_images(self, images, batch_size=None):
        self.image_calls += 1
        rows = []
        for image in images:
            mean = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0)
            vector = np.zeros(self.dim, dtype=np.float32)
            vector[:3] = mean + 1.0
            rows.append(vector)
        return normalise(np.stack(rows))

    def preprocess(self, image):
        return image
