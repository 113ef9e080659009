"""``srn train`` under ``mpirun``: which rank this is, waiting that sleeps, agreement on errors, and progress.

A command started by ``mpirun -np N`` (N > 1) trains an ensemble's bricks on N ranks. Outside ``mpirun`` (or
with one rank) nothing here imports ``mpi4py``, so the serial command never needs it; the launch is recognised
from the variables the launchers set (Open MPI's ``OMPI_COMM_WORLD_SIZE``, MPICH/Hydra's ``PMI_SIZE``).

Three rules keep a parallel run from hanging or burning CPU:

* **Every rank makes the same collective calls.** A check that can fail (the output folder, the parts folder,
  reading the input) runs inside :meth:`Ranks.agree`, which hands every rank the same outcome: all go on, or all
  raise the same :class:`FailedOnEveryRank`, which the command prints once (rank 0) and every rank exits 1.
  An error that escapes on one rank alone cannot be agreed on; :func:`abort` then ends the whole job
  (``MPI_Abort``) instead of leaving the others waiting forever.
* **Waiting sleeps.** MPI's blocking collectives poll a core at 100 % while they wait, which takes that core
  from the ranks still training (``paraview_plugin.parallel.idle_barrier`` measured 62 s against 23 s on two
  cores). Every wait here is a non-blocking barrier tested between short sleeps; :class:`SleepingComm` gives
  :func:`srn_core.ensemble_training.train_ensemble` a communicator whose ``Barrier`` and ``allgather`` wait so.
* **One torch thread per rank** (:func:`limit_threads`, unless ``OMP_NUM_THREADS`` says otherwise): N ranks of
  one thread each use N cores without oversubscribing them with OpenMP threads that spin.

Progress (:class:`ProgressRelay`): each rank's per-brick callback sends ``(brick, step)`` to rank 0 as a small
non-blocking message; rank 0 drains them in its own callback and while it waits, so its one progress bar moves
for every rank's work.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

POLL_SECONDS = 0.02
"""Sleep between two tests of a pending request: short against a brick's training, long against a poll."""

PROGRESS_TAG = 7311
"""Message tag of progress reports (on a duplicate of the world communicator, so no other message matches)."""

_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK")


def launch() -> tuple[int, int] | None:
    """``(rank, size)`` when this process was started by ``mpirun``/``mpiexec`` (any size), else ``None``.

    Read from the launcher's environment, so it needs no MPI library and costs nothing in a serial run."""
    for size_var, rank_var in zip(_SIZE_VARIABLES, _RANK_VARIABLES):
        size = os.environ.get(size_var)
        if size:
            try:
                return int(os.environ.get(rank_var, "0")), int(size)
            except ValueError:
                return None
    return None


def launch_rank() -> int:
    """This process's rank under ``mpirun`` (0 outside it)."""
    started = launch()
    return started[0] if started else 0


def limit_threads() -> None:
    """One thread per rank under ``mpirun`` (unless ``OMP_NUM_THREADS`` says otherwise), and the OpenMP thread
    count, where one is set, for numba's pool too.

    Called before torch is imported, so that OpenMP reads it at start-up (threads that already spin cannot be
    told to sleep); if torch was imported already, its thread count is set as well. numba's ``omp`` threading
    layer (the fused evaluation kernel) sets OpenMP's thread count to ``NUMBA_NUM_THREADS`` (all cores) when it
    starts, which torch shares: without this, every brick after the first evaluation trained on all cores, on
    every rank, and differently from a process that had not evaluated yet."""
    if launch() is not None and not os.environ.get("OMP_NUM_THREADS"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(1)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and 1 <= int(threads) <= (os.cpu_count() or 1) and not os.environ.get("NUMBA_NUM_THREADS"):
        os.environ["NUMBA_NUM_THREADS"] = threads


class FailedOnEveryRank(RuntimeError):
    """An error every rank raises alike (the same message): rank 0 prints it, every rank exits 1."""

    on_every_rank = True
    """What the command's error handler looks for (also set on other errors every rank raises alike)."""


def world() -> "Ranks | None":
    """The ranks of this ``mpirun`` job (more than one), or ``None`` for a serial run.

    Only here is ``mpi4py`` imported (it initialises MPI); missing, it is one clear error on every rank."""
    started = launch()
    if started is None or started[1] < 2:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        error = ImportError(f"srn was started by mpirun with {started[1]} ranks but mpi4py is not installed; "
                            f"install it (pip install 'neural-volume[mpi]', or scripts/setup.sh), or run "
                            f"without mpirun.")
        error.on_every_rank = True  # the same environment on every rank: rank 0 says it for all
        raise error from None
    return Ranks(MPI.COMM_WORLD)


def initialized() -> bool:
    """Whether this process joined an MPI job of several ranks (``mpi4py`` imported and MPI initialised)."""
    MPI = sys.modules.get("mpi4py.MPI")
    return MPI is not None and MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1


def abort(code: int = 1) -> None:
    """End every rank of the job: what a rank does with an error the others cannot know of (they would wait
    for it forever in their next collective call)."""
    from mpi4py import MPI

    MPI.COMM_WORLD.Abort(code)


def wait(request, on_wait=None, poll: float = POLL_SECONDS) -> None:
    """Wait for a non-blocking MPI ``request``, sleeping between tests (``on_wait()`` each time, e.g. to drain
    progress messages) instead of spinning a core."""
    while not request.Test():
        if on_wait is not None:
            on_wait()
        time.sleep(poll)


class SleepingComm:
    """A communicator for :func:`~srn_core.ensemble_training.train_ensemble` whose waits sleep.

    ``Barrier`` is a non-blocking barrier tested between sleeps; ``allgather`` and ``bcast`` first wait so for
    every rank to arrive, then exchange (which then completes at once). ``on_wait`` runs while waiting (rank 0
    drains progress reports there). Anything else is the wrapped communicator's own."""

    def __init__(self, comm, on_wait=None):
        self.comm, self.on_wait = comm, on_wait

    def Get_rank(self) -> int:
        return self.comm.Get_rank()

    def Get_size(self) -> int:
        return self.comm.Get_size()

    def Barrier(self) -> None:
        wait(self.comm.Ibarrier(), self.on_wait)

    barrier = Barrier

    def allgather(self, value):
        self.Barrier()
        return self.comm.allgather(value)

    def bcast(self, value, root: int = 0):
        self.Barrier()
        return self.comm.bcast(value, root=root)

    def __getattr__(self, name):
        return getattr(self.comm, name)


AGREED_ERRORS = (OSError, ValueError, ImportError, RuntimeError, MemoryError)
"""What a check may raise and still be agreed on (anything else is a bug: it ends the job, see :func:`abort`)."""


class Ranks:
    """The ranks of one job: ``rank``, ``size``, :meth:`agree` and :meth:`sleeping`."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def barrier(self, on_wait=None) -> None:
        wait(self.comm.Ibarrier(), on_wait)

    def agree(self, check, root_only: bool = False, on_wait=None):
        """Run ``check()`` on every rank (or on rank 0 alone, ``root_only``) and make every rank share its fate:
        each returns its own result, or all raise :class:`FailedOnEveryRank` with the first failure's message
        (``"rank R: ..."`` when it came from another rank than 0)."""
        result, error = None, None
        if self.rank == 0 or not root_only:
            try:
                result = check()
            except AGREED_ERRORS as exc:
                error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self.barrier(on_wait)  # sleep until all have checked; the exchange below then completes at once
        errors = self.comm.allgather(error)
        for rank, message in enumerate(errors):
            if message is not None:
                raise FailedOnEveryRank(message if rank == 0 else f"rank {rank}: {message}")
        return result

    def sleeping(self, on_wait=None) -> SleepingComm:
        return SleepingComm(self.comm, on_wait)


class ProgressRelay:
    """Every rank's brick progress on rank 0's one bar.

    ``report(k, step, psnr)`` from the per-brick callback: rank 0 records it, the others send it to rank 0 (a
    24-byte non-blocking send, never waited for while training). ``drain()`` (rank 0, in its callback and while
    it waits) records what has arrived. ``finish()``: every other rank sends an end mark and rank 0 drains until
    it has one from each, so the bar ends on every rank's last report. ``ranks`` ``None``: a serial run.
    ``on_change(steps, k, psnr)`` (rank 0) gets the steps done per brick after brick ``k`` reported ``psnr``."""

    END = -1

    def __init__(self, ranks: Ranks | None, on_change):
        self.ranks, self.on_change = ranks, on_change
        self.done: dict[int, int] = {}
        self.pending: list = []
        self.comm = ranks.comm.Dup() if ranks is not None else None
        self.ended: set[int] = set()

    @property
    def is_root(self) -> bool:
        return self.ranks is None or self.ranks.rank == 0

    def report(self, k: int, step: int, psnr: float) -> None:
        if self.is_root:
            self._record(k, step, psnr)
            self.drain()
            return
        self._send(k, step, psnr)

    def _send(self, k: int, step: int, psnr: float) -> None:
        message = np.array([k, step, psnr], dtype=np.float64)  # brick and step counts are exact in a float64
        self.pending.append((self.comm.Isend(message, dest=0, tag=PROGRESS_TAG), message))
        self.pending = [(r, m) for r, m in self.pending if not r.Test()]  # eager sends complete at once

    def _record(self, k: int, step: int, psnr: float) -> None:
        if step > self.done.get(k, -1):
            self.done[k] = step
            self.on_change(self.done, k, psnr)

    def drain(self) -> None:
        """Rank 0: record every report that has arrived (never waits)."""
        if self.comm is None or not self.is_root:
            return
        from mpi4py import MPI

        status = MPI.Status()
        message = np.empty(3, dtype=np.float64)
        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=PROGRESS_TAG, status=status):
            self.comm.Recv(message, source=status.Get_source(), tag=PROGRESS_TAG)
            k, step, psnr = int(message[0]), int(message[1]), float(message[2])
            if k == self.END:
                self.ended.add(status.Get_source())
            else:
                self._record(k, step, psnr)

    def finish(self) -> None:
        """The last exchange, on every rank (also after a failure, so that rank 0 never waits for a lost rank's
        reports): the others send their end mark; rank 0 drains, sleeping, until all have."""
        if self.comm is None:
            return
        if not self.is_root:
            self._send(self.END, self.END, 0.0)
            for request, _ in self.pending:
                wait(request)
            self.pending = []
            return
        while len(self.ended) < self.ranks.size - 1:
            self.drain()
            time.sleep(POLL_SECONDS)


__all__ = ["launch", "launch_rank", "limit_threads", "world", "initialized", "abort", "wait", "Ranks", "SleepingComm",
           "FailedOnEveryRank", "ProgressRelay"]
