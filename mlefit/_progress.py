"""A tqdm progress bar for the chunked runs of long fits (an optional dependency)."""

from __future__ import annotations

__all__ = ["progress_bar"]


def progress_bar(progress, unit):
    """A tqdm bar (``progress=True`` or a dict of tqdm options), or ``None``."""
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "progress=True needs tqdm: pip install 'mlefit[progress]' (or tqdm)"
        ) from e
    options = {"desc": "mlefit", "unit": unit, "leave": False}
    if isinstance(progress, dict):
        options.update(progress)
    return tqdm(**options)

