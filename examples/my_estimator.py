"""Your own Q estimator, written against noisy_convnet's public interface and selected without editing the
package:

    python train.py q=custom q._target_=examples.my_estimator.ConfusionQ [+q.smoothing=1.0]
    make example-estimator ARGS='data=digits trainer.max_epochs=2 hydra.run.dir=/tmp/mine'

ConfusionQ: an early-stopped plain net predicts the training images; Q_hat is the confusion matrix of its
predicted classes against the noisy labels, Q_hat[j, i] = p(noisy = j | predicted = i) (each column plus
``smoothing`` counts, normalised); then a fresh net trains through Q_hat, fixed. Expected on the 8x8 digits
at uniform 0.5 noise (20 epochs): a Q_hat close to Q* where the plain net's predictions are mostly right.
"""

from __future__ import annotations

import numpy as np

from noisy_convnet.errors import UserError
from noisy_convnet.estimators import Fitted, QEstimator
from noisy_convnet.layers import FixedNoiseLayer, NoiseLayer


class ConfusionQ(QEstimator):
    name, label, estimated = "confusion", "confusion matrix", True

    def __init__(self, smoothing: float = 1.0):
        if not np.isfinite(smoothing) or smoothing < 0:  # checked when built: before any data is loaded
            raise UserError(f"q.smoothing: {smoothing} must be a finite number >= 0 (counts added per cell)")
        self.smoothing = float(smoothing)

    def needs_validation(self) -> str | None:
        return "q: q=confusion early-stops its plain net on the noisy validation slice, which needs one"

    def fit(self, noisy, train, val, trainers) -> Fitted:
        k = self.outputs(noisy)
        plain = trainers.fit(NoiseLayer(k), train, val, early_stopping=True, predict=train, stage="plain")  # shared
        counts = np.full((k, k), self.smoothing)
        np.add.at(counts, (train.y.numpy(), plain.probs.argmax(axis=1)), 1.0)  # rows: noisy label, cols: predicted
        q_hat = counts / counts.sum(axis=0, keepdims=True)
        forward = trainers.fit(FixedNoiseLayer(q_hat), train, val)
        return Fitted(forward, q_hat, {"plain_test_error": plain.test.test_error})
