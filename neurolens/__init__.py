"""NeuroLens: keep every inference benchmark run, queryable and comparable.

The documented storage API lives in :mod:`neurolens.storage.store`; reading runs back from a
store or a remote table in :mod:`neurolens.sources` (typed, for outside tools, in
:mod:`neurolens.typed_runs`); comparing them in :mod:`neurolens.analysis`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["__version__", "load_runs"]


def load_runs(root: Any = None, **filters: Any) -> pd.DataFrame:
    """Runs of a store or remote table as a pandas DataFrame of typed columns, newest first
    (see ``neurolens.typed_runs.load_runs``)."""
    # Imported here so that ``import neurolens`` stays cheap (the plugin and CLI import it).
    from neurolens.typed_runs import load_runs as _load_runs

    return _load_runs(root, **filters)
