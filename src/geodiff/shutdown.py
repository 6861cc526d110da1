"""Stopping a workflow's running jobs when Snakemake itself is told to stop.

Snakemake answers SIGTERM by waiting for its running jobs to finish ("Will exit after
finishing currently running jobs"), and a SIGINT sent to its process alone (``kill -INT``,
not Ctrl-C, which the terminal sends to every process of the foreground group) leaves
the job processes running while Snakemake waits for them. A training job of hours then
outlives the ``kill`` or the ``scancel`` of the controlling job that was meant to stop it.

:func:`stop_jobs_on_signal`, called from the workflow's ``onstart``, makes both signals
end every process Snakemake started (SIGTERM, then SIGKILL after a grace period) and
then raise :class:`KeyboardInterrupt`, so Snakemake cancels as on Ctrl-C: the SLURM
executor ``scancel``s its jobs, and a training killed this way resumes from its last
checkpoint on the next run.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import psutil

log = logging.getLogger(__name__)

#: Seconds a job process has to exit after SIGTERM before it gets SIGKILL; well below
#: SLURM's default KillWait (30 s), so a ``scancel``-ed controlling job still has time
#: to cancel its own jobs.
GRACE_S = 10.0


def end_descendants(grace_s: float = GRACE_S) -> list[int]:
    """Send SIGTERM to every descendant of this process, SIGKILL to those alive after ``grace_s`` s.

    Returns the process ids that were signalled.
    """
    procs = psutil.Process().children(recursive=True)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        log.warning("process %d ignored SIGTERM for %.0f s: killing it", proc.pid, grace_s)
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return [proc.pid for proc in procs]


def _stop(signum: int, frame: FrameType | None) -> None:
    """Signal handler: end the job processes, then interrupt Snakemake as Ctrl-C does."""
    name = signal.Signals(signum).name
    pids = end_descendants()
    log.warning("%s: stopped %d job process(es) %s; cancelling the workflow", name, len(pids), pids)
    raise KeyboardInterrupt(name)


def stop_jobs_on_signal() -> None:
    """Make SIGTERM and SIGINT stop Snakemake's running jobs with it (call from ``onstart``).

    Must run in the main thread, after Snakemake installed its own SIGTERM handler (which
    ``onstart`` does: the scheduler exists by then).
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
