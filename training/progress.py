"""Progress of a training run: a tqdm bar on a terminal, one log line per evaluation otherwise (logs of a
container, CI), both with the epoch cap early stopping will really use and an ETA to it."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from tqdm import tqdm

__all__ = ["EpochProgress", "format_seconds"]

log = logging.getLogger("ld4mrec.train")


def format_seconds(seconds: float) -> str:
    """``1h02m``, ``3m07s`` or ``12s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class EpochProgress:
    """Reports epochs of a run. ``update`` takes the current cap: the epoch at which early stopping ends the
    run if nothing improves (``min(epochs, best_epoch + patience * eval_every)``), so the ETA is to that
    epoch, at the mean pace so far (training and evaluation included).

    Args:
        desc: label, e.g. "ld4mrec lastfm2k".
        epochs: the most epochs the run may take.
        enabled: False reports nothing.
        stream: where a terminal bar is drawn; a non-terminal stream gets log lines instead.
        log_every_s: least seconds between two log lines (the first and the last are always logged).
    """

    def __init__(
        self,
        desc: str,
        epochs: int,
        enabled: bool = True,
        stream: TextIO | None = None,
        log_every_s: float = 5.0,
    ) -> None:
        self.desc = desc
        self.epochs = epochs
        self.enabled = enabled
        stream = stream if stream is not None else sys.stderr
        self._bar: tqdm | None = None
        if enabled and stream.isatty():
            self._bar = tqdm(total=epochs, desc=desc, unit="epoch", file=stream, dynamic_ncols=True)
        self._started = time.perf_counter()
        self._last_log = float("-inf")
        self._log_every_s = log_every_s

    def eta_seconds(self, epoch: int, cap: int) -> float:
        """Seconds to ``cap`` at the mean pace of the ``epoch`` epochs done."""
        elapsed = time.perf_counter() - self._started
        return elapsed / max(epoch, 1) * max(cap - epoch, 0)

    def update(self, epoch: int, cap: int, fields: dict[str, str], *, force: bool = False) -> None:
        """Epoch ``epoch`` is done; ``cap`` as in the class docstring; ``fields`` e.g. loss, valid metric."""
        if not self.enabled:
            return
        if self._bar is not None:
            if self._bar.total != cap:
                self._bar.total = cap
            self._bar.update(epoch - self._bar.n)
            self._bar.set_postfix(fields, refresh=True)
            return
        now = time.perf_counter()
        if not force and epoch != 1 and now - self._last_log < self._log_every_s:
            return
        self._last_log = now
        shown = " ".join(f"{k} {v}" for k, v in fields.items())
        log.info(
            "%s: epoch %d/%d (early-stopping cap; at most %d) %s | %.2f s/epoch, ETA %s",
            self.desc,
            epoch,
            cap,
            self.epochs,
            shown,
            (now - self._started) / max(epoch, 1),
            format_seconds(self.eta_seconds(epoch, cap)),
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
