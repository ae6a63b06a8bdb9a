"""What the load test is doing while it runs: which phase and variant, how far, about how long is left."""

import sys
import time

FIRST_GUESS_SECONDS = 35  # one step (start a worker, queue the backlog, measure, stop), before any finished


class Progress:
    def __init__(self, steps: int, out=sys.stdout):
        self.steps, self.out = steps, out
        self.done, self.began = 0, time.monotonic()

    def start(self, phase: str, what: str) -> None:
        self.say(f"[{self.done + 1}/{self.steps}] {phase}: {what}; {self.left()}")

    def finish(self) -> None:
        self.done += 1

    def tasks(self, completed: int, count: int) -> None:
        self.say(f"    {completed}/{count} tasks done")

    def left(self) -> str:
        per_step = (time.monotonic() - self.began) / self.done if self.done else FIRST_GUESS_SECONDS
        seconds = per_step * (self.steps - self.done)
        return f"about {seconds / 60:.0f} min left" if seconds >= 90 else f"about {seconds:.0f} s left"

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)
