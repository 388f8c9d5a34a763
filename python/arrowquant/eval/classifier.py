"""The digits classifier's feature space: hidden ReLU layer of a scikit-learn MLP.

Trained by models/train_reference.py; only its weights ship (safetensors), so the forward pass is
written out here in numpy - two matrix products - rather than unpickling an estimator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arrowquant.eval.digits import to_classifier_input

WEIGHTS = Path(__file__).with_name("digits_classifier.safetensors")


@dataclass(frozen=True)
class DigitsClassifier:
    w0: np.ndarray
    b0: np.ndarray
    w1: np.ndarray
    b1: np.ndarray

    @staticmethod
    def load(path: Path = WEIGHTS) -> DigitsClassifier:
        from safetensors.numpy import load_file

        t = load_file(str(path))
        return DigitsClassifier(*(t[k].astype(np.float64) for k in ("w0", "b0", "w1", "b1")))

    @property
    def feature_dim(self) -> int:
        return int(self.w0.shape[1])

    def features(self, images: Any) -> np.ndarray:
        """[N, 1, S, S] images in [-1, 1] -> [N, 64] hidden activations."""
        x = to_classifier_input(images) / 16.0
        h: np.ndarray = np.maximum(x @ self.w0 + self.b0, 0.0)
        return h

    def predict(self, images: Any) -> np.ndarray:
        pred: np.ndarray = np.argmax(self.features(images) @ self.w1 + self.b1, axis=1)
        return pred
