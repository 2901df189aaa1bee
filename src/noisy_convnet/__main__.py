"""python -m noisy_convnet key=value ...: the same as the noisy-convnet console script."""

from .cli import entry

entry()
