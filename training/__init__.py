"""Training NiN on Fashion-MNIST in every backend (issue 12): `nin train`, `nin plot`, `nin lr-find`."""
