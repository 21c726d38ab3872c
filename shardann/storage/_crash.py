"""Named crash points for crash-safety tests.

``SHARDANN_CRASH_POINT=name`` makes the process kill itself with SIGKILL the
first time it reaches :func:`crash_point` ``(name)``; ``name@N`` waits for
the N-th time. The store calls it before and after every file it writes and
around the manifest publish, so a test can stop a commit at each step and
check that a fresh process finds exactly the old or exactly the new version.
Unset (the normal case) it costs one environment lookup.
"""

import os
import signal

ENV_VAR = "SHARDANN_CRASH_POINT"

#: Every point the store reaches during a commit, in the order of a commit
#: that writes all kinds of files.
POINTS = (
    "segment.before_write",      # before a segment file is created
    "segment.row_group",         # after each row group of a segment (a partial file)
    "segment.after_write",       # segment written and fsynced
    "codebooks.before_write",
    "codebooks.after_write",
    "tombstone.before_write",
    "tombstone.after_write",
    "commit.before_manifest",    # all data files durable, no manifest yet
    "manifest.after_tmp_write",  # temp manifest written and fsynced, not published
    "manifest.after_publish",    # manifest linked into place, directory not yet fsynced
    "commit.after_publish",      # commit durable, not yet returned to the caller
)

_hits = {}


def crash_point(name):
    """SIGKILL this process if ``SHARDANN_CRASH_POINT`` names this point."""
    want = os.environ.get(ENV_VAR)
    if not want:
        return
    target, _, nth = want.partition("@")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)
