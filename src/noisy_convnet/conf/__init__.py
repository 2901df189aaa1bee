"""The configs, shipped inside the package: Hydra reads them as pkg://noisy_convnet.conf."""
