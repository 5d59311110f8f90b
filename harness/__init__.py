"""What the drivers share: starting a backend in its own interpreter, and loading it there."""
