"""What the load test is doing while it runs: which phase and variant, how far, about how long is left."""

import sys
import time


class Progress:
    """Steps with an estimate of each one's seconds; what is left is the estimate of the steps to
    come, scaled by how long the finished ones took against their estimate."""

    def __init__(self, estimates: list, out=sys.stdout):
        self.estimates, self.out = estimates, out
        self.done, self.began = 0, time.monotonic()

    def start(self, phase: str, what: str) -> None:
        self.say(f"[{self.done + 1}/{len(self.estimates)}] {phase}: {what}; {self.left()}")

    def finish(self) -> None:
        self.done += 1

    def tasks(self, completed: int, count: int) -> None:
        self.say(f"    {completed}/{count} tasks done")

    def left(self) -> str:
        seconds = sum(self.estimates[self.done:])
        if self.done:
            seconds *= (time.monotonic() - self.began) / sum(self.estimates[:self.done])
        return f"about {seconds / 60:.0f} min left" if seconds >= 90 else f"about {seconds:.0f} s left"

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)
