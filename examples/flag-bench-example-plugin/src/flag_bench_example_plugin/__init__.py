"""An example flag-bench method plugin (see README.md)."""
