"""Progress bars for every loop that takes more than a few seconds (tqdm on stderr)."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, enabled: bool = True) -> tqdm:
    """A bar that disappears when done; ``enabled=False`` gives a silent one with the same methods."""
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, unit="step")
