"""``neurolens report``: a self-contained HTML page of latency trends, regressions and
hardware changes (``data`` computes it, ``page`` writes it, ``changepoints`` finds steps)."""
