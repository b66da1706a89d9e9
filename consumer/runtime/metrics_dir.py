"""The metrics directory: private to the worker's user before anything is written to it.

prometheus_client writes each process's values to `<dir>/<kind>_<pid>.db`, opening the path
as it is: a symlink planted there is followed, and the worker (often with more rights than
the planter) grows its target to 64 KiB and more. The fallback directory is in the shared
temporary directory, where anyone may have created it first. So before metrics start, the
directory must be a real directory (not a symlink to one), owned by this process's user,
writable by no one else, and hold no symlinks; anything else is refused with one line saying
how to fix it. Once that holds, only this user (and root) can put anything there.
"""

from __future__ import annotations

import os
import stat

from consumer.errors import ConfigError


def prepare_metrics_dir(directory: str) -> str:
    """Creates `directory` (mode 0700) when absent and checks it as the module docstring
    says; returns it. Raises ConfigError, one line naming the directory and the fix."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError("metrics.multiproc_dir %s cannot be created: %s"
                          % (directory, exc.strerror or exc)) from exc
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError("metrics.multiproc_dir %s is a symlink: metrics are never written "
                          "through one; point the setting at the real directory" % directory)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError("metrics.multiproc_dir %s is not a directory" % directory)
    uid = os.geteuid()
    if info.st_uid != uid:
        raise ConfigError("metrics.multiproc_dir %s belongs to uid %d, not to this user (uid "
                          "%d): another user could plant files there; remove it or set "
                          "metrics.multiproc_dir to a directory of this user"
                          % (directory, info.st_uid, uid))
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError("metrics.multiproc_dir %s is writable by others (mode %o): run "
                          "chmod go-w on it" % (directory, stat.S_IMODE(info.st_mode)))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError("metrics.multiproc_dir %s is not writable" % directory)
    _refuse_symlinks(directory)
    return directory


def _refuse_symlinks(directory: str) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_symlink():
                raise ConfigError("metrics.multiproc_dir %s holds a symlink %s: metrics are "
                                  "never written through one; remove it"
                                  % (directory, entry.name))
