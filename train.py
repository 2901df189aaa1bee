"""Train one model (or, with -m, a sweep) from a checkout: python train.py noise=flip level=0.5 q=learned

The same as the installed `noisy-convnet` console script and `python -m noisy_convnet` (noisy_convnet/cli.py).
"""

from noisy_convnet.cli import entry

if __name__ == "__main__":
    entry()
