"""Progress bars on stderr (tqdm) for work that may take a while: loading, vision encoding, long prefills.

show: True = always, None = only when stderr is a terminal (tqdm's disable=None), False = never. A bar appears
only once its work has run for a second (tqdm's delay), so quick calls print nothing.
"""

from __future__ import annotations

DELAY = 1.0  # seconds of work before a bar appears


def progress_bar(iterable, show: bool | None, desc: str, unit: str = "it", total: int | None = None):
    if show is False:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=None if show is None else False, delay=DELAY,
                leave=False)
