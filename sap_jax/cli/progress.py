"""Progress of a command on stderr: a live bar on a terminal, one line per update in a
file or a pipe, nothing when quiet."""

from __future__ import annotations

import sys
import time
from typing import Any

from sap_jax.cli.interrupts import raise_if_interrupted


class Progress:
  """Progress on stderr: a live bar on a terminal, one line per update in a file or a
  pipe (no carriage returns), nothing when quiet."""

  def __init__(self, quiet: bool, stream=None):
    self.stream = stream if stream is not None else sys.stderr
    self.quiet = quiet
    isatty = getattr(self.stream, "isatty", None)
    self.live = not quiet and callable(isatty) and bool(isatty())
    self._bar = None
    self._started: dict[str, float] = {}

  def say(self, text: str) -> None:
    raise_if_interrupted()
    if not self.quiet:
      print(text, file=self.stream, flush=True)

  def train_options(self, epochs: int) -> dict[str, Any]:
    """`train.train_model`'s ``progress``/``log_fn``: its tqdm bar on a terminal, else
    one line every ``epochs // 20`` epochs (and the last)."""
    if self.quiet or self.live:

      def check(entry: dict[str, float]) -> None:
        raise_if_interrupted()

      return {"progress": self.live, "log_fn": check}
    every = max(1, epochs // 20)

    def line(entry: dict[str, float]) -> None:
      raise_if_interrupted()
      epoch = int(entry["epoch"])
      if epoch % every and epoch != epochs:
        return
      val = f", val acc {entry['val_accuracy']:.3f}" if "val_accuracy" in entry else ""
      self.say(
        f"train epoch {epoch}/{epochs}: loss {entry['loss']:.4f}, "
        f"train acc {entry['train_accuracy']:.3f}{val}"
      )

    return {"progress": False, "log_fn": line}

  def phase(self, name: str, done: int, total: int) -> None:
    """`run_sap`'s ``progress`` callback: a line per phase, a bar over the α values."""
    raise_if_interrupted()
    if self.quiet:
      return
    if name == "α sweep":
      self._sweep(done, total)
    elif done == 0:
      self._started[name] = time.perf_counter()
      self.say(f"correct: {name} …")
    else:
      seconds = time.perf_counter() - self._started.get(name, time.perf_counter())
      self.say(f"correct: {name} done ({seconds:.1f} s)")

  def _sweep(self, done: int, total: int) -> None:
    if not self.live:
      self.say(f"correct: α sweep {done}/{total} α values scored")
      return
    if self._bar is None:
      from tqdm.auto import tqdm

      self._bar = tqdm(total=total, desc="correct: α sweep", unit="α", file=self.stream)
    self._bar.update(done - self._bar.n)
    if done >= total:
      self._bar.close()
      self._bar = None
