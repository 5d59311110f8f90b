"""The `nin` command: the top of the suite, standing on the conformance, benchmark and training drivers."""
