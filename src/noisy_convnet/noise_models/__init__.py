"""How noise is applied: one ``NoiseModel`` per ``conf/noise/*.yaml`` (built with ``_target_``), which turns
a loaded data set into ``NoisyData``: the training images with their noisy labels, their true labels,
the clean test set and Q*.

  none    -- clean labels, Q* = I.
  flip    -- each label redrawn from column y of Q* (uniform, pair, random or a file), at ``level``.
  labels  -- real noisy labels from a file, one per image of the training pool; Q* is their realised matrix.
  cifar10n / cifar100n -- CIFAR-N's human labels by name (noise.subset), the file fetched when not given.
  instance -- instance-dependent flips (Xia et al. 2020) at ``level``; Q* is the realised matrix.
  outlier -- Eq. 8: inliers, outliers with uniform labels and labelled outliers (K+1 classes); flip noise on
             the inliers at ``inlier_level`` (0 = none).
One module per model (flip.py, labels.py, instance.py, outlier.py) over the interface in base.py; a
user's own model is a class in a file of their own, named by ``noise._target_``. Each model checks its own
arguments when it is built (``config.validate`` builds it before any data is loaded) and says whether it
uses the top-level ``level``: one that does not refuses a non-default level, so a sweep over it cannot
train the same model several times.

One seed feeds independent streams (``rng(seed, stream)``): 1 draws Q*, 2 the noisy labels, 3 the outlier
composition, 4 the halving of an outlier folder, 5 instance noise; the noisy labels do not change when the model does.
"""

from .base import NoiseModel, NoisyData, rng
from .flip import FlipNoise, NoNoise
from .instance import InstanceNoise
from .labels import CifarN, LabelFile
from .outlier import OutlierNoise

__all__ = ["CifarN", "FlipNoise", "InstanceNoise", "LabelFile", "NoNoise", "NoiseModel", "NoisyData", "OutlierNoise",
           "rng"]
