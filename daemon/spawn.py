"""Start the daemon's child processes (receiver, exposition) the ``spawn`` way, without
multiprocessing's resource tracker.

Every ``spawn`` start in Python 3.11 first launches the tracker, a whole interpreter of its own
(15 MB resident at 10k streams, 4 % of the daemon), so that it can unlink named semaphores and
shared memory a crashed process leaves behind. The daemon's children create neither: they talk over
pipes and read an anonymous ``memfd``, which the kernel frees with its last holder. So
:func:`context` is the ``spawn`` context whose processes start without it (the child learns
``tracker_fd = None`` and would start a tracker of its own only if it ever created such a resource).
"""

from __future__ import annotations

import io
import os
from multiprocessing import context as mp_context
from multiprocessing import popen_spawn_posix, reduction, spawn, util


class _Popen(popen_spawn_posix.Popen):
    """``popen_spawn_posix.Popen`` whose launch passes no tracker descriptor to the child."""

    def _launch(self, process_obj: mp_context.BaseProcess) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        fp = io.BytesIO()
        mp_context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, fp)
            reduction.dump(process_obj, fp)
        finally:
            mp_context.set_spawning_popen(None)
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        try:
            cmd = spawn.get_command_line(tracker_fd=None, pipe_handle=child_r)
            self._fds.extend([child_r, child_w])
            self.pid = util.spawnv_passfds(spawn.get_executable(), cmd, self._fds)
            self.sentinel = parent_r
            with open(parent_w, "wb", closefd=False) as f:
                f.write(fp.getbuffer())
        finally:
            self.finalizer = util.Finalize(self, util.close_fds, (parent_r, parent_w))
            os.close(child_r)
            os.close(child_w)


class _Process(mp_context.SpawnProcess):
    _start_method = "spawn"

    @staticmethod
    def _Popen(process_obj: mp_context.BaseProcess) -> _Popen:  # multiprocessing's naming
        return _Popen(process_obj)


class _Context(mp_context.SpawnContext):
    Process = _Process


_CONTEXT = _Context()


def context() -> mp_context.SpawnContext:
    """The ``spawn`` context for the daemon's children: ``Process``, ``Pipe``; no resource tracker."""
    return _CONTEXT
