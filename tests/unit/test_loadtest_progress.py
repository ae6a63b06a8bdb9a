"""The load test says where it is and about how long is left, from the steps it has finished."""

import io

from loadtest import progress
from loadtest.progress import Progress


def test_progress_names_the_step_and_projects_the_rest_from_the_finished_ones(monkeypatch):
    clock = iter([0.0, 40.0])  # started, then when the second step starts
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    steps = Progress(4, out=out)

    steps.start("ceiling", "gevent-25-noop (noop)")
    steps.finish()
    steps.start("compare", "gevent-25 (esi)")

    first, second = out.getvalue().splitlines()
    assert first == f"[1/4] ceiling: gevent-25-noop (noop); about {progress.FIRST_GUESS_SECONDS * 4 / 60:.0f} min left"
    assert second == "[2/4] compare: gevent-25 (esi); about 2 min left"  # 40 s a step, 3 steps to go
