"""pytest-neurolens: the pytest plugin that records inference benchmarks as runs."""
