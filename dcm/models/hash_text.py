"""The toy family's text encoder: every word maps to a fixed pseudo-random vector (seeded by its hash).

No weights, no vocabulary file, nothing to download, identical on every machine. The shapes domain
has a closed vocabulary whose words are unambiguous (object colours and background colours are
different words), so a bag of word vectors plus a light position code is all the teacher needs to
read "a red circle moving left on a black background". The empty prompt encodes to zeros: the
unconditional input for classifier-free guidance.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch

CONFIG_NAME = "config.json"
WORD = re.compile(r"[a-z0-9]+")


class HashTextEncoder:
    def __init__(self, dim: int, max_tokens: int, position_scale: float):
        self.dim, self.max_tokens, self.position_scale = dim, max_tokens, position_scale
        self._cache: dict[str, np.ndarray] = {}
        positions = np.arange(max_tokens)[:, None]
        frequencies = np.exp(-np.log(max_tokens * 4.0) * np.arange(0, dim, 2) / dim)[None, :]
        code = np.zeros((max_tokens, dim))
        code[:, 0::2] = np.sin(positions * frequencies)
        code[:, 1::2] = np.cos(positions * frequencies)[:, : dim // 2]
        self._positions = code * position_scale

    @staticmethod
    def words(prompt: str) -> list[str]:
        return WORD.findall(prompt.lower())

    def word_vector(self, word: str) -> np.ndarray:
        if word not in self._cache:
            seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
            self._cache[word] = np.random.default_rng(seed).standard_normal(self.dim)
        return self._cache[word]

    def __call__(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """{"embeds": (B, max_tokens, dim) float32, "mask": (B, max_tokens) bool}; padding is zeros."""
        embeds = np.zeros((len(prompts), self.max_tokens, self.dim), np.float32)
        mask = np.zeros((len(prompts), self.max_tokens), bool)
        for row, prompt in enumerate(prompts):
            words = self.words(prompt)[: self.max_tokens]
            for col, word in enumerate(words):
                embeds[row, col] = self.word_vector(word) + self._positions[col]
            mask[row, : len(words)] = True
        return {"embeds": torch.from_numpy(embeds), "mask": torch.from_numpy(mask)}

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(
            {"_class_name": type(self).__name__, "dim": self.dim, "max_tokens": self.max_tokens,
             "position_scale": self.position_scale}, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> HashTextEncoder:
        config = json.loads((Path(folder) / CONFIG_NAME).read_text())
        return cls(config["dim"], config["max_tokens"], config["position_scale"])
