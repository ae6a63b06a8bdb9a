"""The load test says where it is and about how long is left, from its estimates and the steps it has finished."""

import io

from loadtest import progress
from loadtest.progress import Progress


def test_progress_names_the_step_and_scales_the_estimate_of_the_rest_by_the_steps_done(monkeypatch):
    clock = iter([0.0, 60.0])  # started, then when the second step starts
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    steps = Progress([30, 30, 60, 90], out=out)

    steps.start("ceiling", "gevent-75-noop (noop)")
    steps.finish()
    steps.start("compare", "gevent-75 (esi)")

    first, second = out.getvalue().splitlines()
    assert first == "[1/4] ceiling: gevent-75-noop (noop); about 4 min left"  # 210 s estimated
    assert second == "[2/4] compare: gevent-75 (esi); about 6 min left"  # took twice its estimate: 2 x 180 s
