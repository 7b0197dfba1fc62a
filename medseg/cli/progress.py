"""The CLI's face of the engine contract: a ``Progress`` callback drawn as a tqdm bar."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from medseg.runtime import Progress


@contextmanager
def tqdm_progress(desc: str, unit: str, *, disable: bool = False) -> Iterator[Progress | None]:
    """A ``progress(done, total)`` callback that draws a tqdm bar; None when ``disable``.

    ``total`` may grow while the call runs (the engine contract allows it): the bar follows.
    """
    if disable:
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=None, desc=desc, unit=unit) as bar:

        def progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.total = total
                bar.refresh()
            bar.update(done - bar.n)

        yield progress
