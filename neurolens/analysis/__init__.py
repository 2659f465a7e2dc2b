"""Deciding: runs into samples, statistics, change points, verdicts, the comparison and its
text. The CLI, the HTML report and the pytest gate all call this package; it reads runs
through ``neurolens.sources`` and never writes.

- ``metrics``: metric names, aliases and which way is better
- ``samples``: the rule that turns runs into samples (one per session and round)
- ``stats``: Mann-Whitney U, robust spread, Student's t quantiles
- ``verdicts``: the threshold, a group's verdict (``judge``) and a comparison's result
- ``changepoints``: level changes in a series of per-session values
- ``compare``: two sets of runs, group by group
- ``text``: a comparison as a terminal table, markdown, a summary line
"""
