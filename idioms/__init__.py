"""The framework idioms side by side, cut from the live source (issue 14): `nin idioms`."""
