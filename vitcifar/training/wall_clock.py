"""Where a command's wall time goes: named phases timed from the command's start, for
results.json ("wall_time") and for the time budget, which counts the whole command.

Phases of a training run, in the order they happen: start-up (flags, TensorFlow's import,
the device), precision (--mixed-precision auto's decision), data loading, model build,
calibration (--time-budget: the timed steps, tracing the train and test steps), then per
epoch training steps, validation and epoch-end saves, and at the end test evaluation,
figures and results. What no phase names (Python between them) is "other".
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict, List, Optional

# A cut-short last epoch counts towards the steady rate from this share of an epoch on: its
# first steps wait for a new iterator, and a few steps time that more than the rate.
LEAST_EPOCH_SHARE = 0.1


class WallClock:
    """Seconds per phase since `started`, a time.perf_counter() reading taken when the
    command started; a phase that repeats (every epoch's validation) adds up."""

    def __init__(self, started: Optional[float] = None):
        self.started = time.perf_counter() if started is None else started
        self.seconds: Dict[str, float] = {}
        self.epochs: List[dict] = []      # per epoch: images, training and validation seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - began)

    def steady_images_per_second(self, epoch_images: int) -> Optional[float]:
        """The fastest epoch after the first, validation included: the rate the run trains
        at once everything that happens once is done (None before a second epoch). A
        cut-short last epoch (a budget's) counts as the whole epoch of `epoch_images` images
        it would have been at its step rate: its validation, which a whole epoch has too, is
        spread over a whole epoch's images, not over its few. One shorter than
        LEAST_EPOCH_SHARE of an epoch does not count."""
        later = [epoch_images / (epoch["train_seconds"] * epoch_images / epoch["images"]
                                 + epoch["validation_seconds"])
                 for epoch in self.epochs[1:]
                 if epoch["images"] >= LEAST_EPOCH_SHARE * epoch_images
                 and epoch["train_seconds"]]
        return max(later) if later else None

    def record(self, images_seen: int, epoch_images: int, budget_minutes: float = 0.0) -> dict:
        """results.json's "wall_time": total and per-phase seconds, the steady rate (epochs
        of `epoch_images` images: steps x batch), and with a budget the share of it that
        trained at that rate (images seen / steady rate / budget)."""
        total = self.elapsed()
        steady = self.steady_images_per_second(epoch_images)
        phases = {name: round(value, 2) for name, value in self.seconds.items()}
        phases["other"] = round(total - sum(self.seconds.values()), 2)
        record = {"total_seconds": round(total, 2), "phases": phases,
                  "epochs": [{k: round(v, 2) if isinstance(v, float) else v
                              for k, v in epoch.items()} for epoch in self.epochs],
                  "steady_images_per_second": round(steady, 1) if steady else None}
        if budget_minutes and steady:
            record["budget_share_at_steady_rate"] = round(
                images_seen / steady / (budget_minutes * 60), 3)
        return record

    def describe(self) -> str:
        """One line for the end of a run: total and the phases, largest first."""
        ordered = sorted(self.seconds.items(), key=lambda item: -item[1])
        return (f"Wall time {self.elapsed():.0f} s: " +
                ", ".join(f"{name} {seconds:.1f} s" for name, seconds in ordered))
