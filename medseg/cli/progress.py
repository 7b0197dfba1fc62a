"""The one place the CLI turns an engine's ``progress(done, total)`` into a tqdm bar.

>>> with tqdm_progress("SAM2 propagation", "slice") as progress:    # doctest: +SKIP
...     predictor.segment(volume, prompts, progress=progress)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

from medseg.runtime import Progress


@contextmanager
def tqdm_progress(desc: str, unit: str = "it", *, disable: bool = False) -> Iterator[Progress]:
    """A ``Progress`` callback drawing one tqdm bar, closed when the block ends.

    ``unit="B"`` scales bytes (kB, MB). ``total`` may grow between calls (a new phase starts);
    the bar follows it. ``disable=True`` (``--no-progress``) draws nothing.
    """
    with tqdm(total=None, desc=desc, unit=unit, unit_scale=unit == "B", disable=disable) as bar:
        def progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
                bar.refresh()
            bar.update(done - bar.n)

        yield progress
