"""A real PostgreSQL server for the tests, started by a session fixture.

``postgresql_dsn`` runs ``initdb`` and ``pg_ctl`` (from PATH or
``/usr/lib/postgresql/*/bin``) on a free port of 127.0.0.1 with its data in a
temporary directory, yields a libpq DSN, and stops the server afterwards. Tests
that use it are skipped, with the reason, only when no PostgreSQL binaries exist
(``.ci/run`` installs Debian's ``postgresql`` package when ``initdb`` is missing).
PostgreSQL refuses to run as root: under root the server runs as the ``postgres``
user (or ``nobody``).
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import pytest


def pg_bindir():
    """The directory of ``initdb`` and ``pg_ctl``, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return os.path.dirname(os.path.realpath(found))
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(d, "initdb")) and os.path.exists(
                os.path.join(d, "pg_ctl")):
            return d
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _runas():
    """The command prefix that runs a PostgreSQL binary as a non-root user."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"], user
    pytest.skip("PostgreSQL refuses to run as root and there is no postgres/nobody user")


@pytest.fixture(scope="session")
def postgresql_dsn():
    """A libpq DSN of a fresh PostgreSQL server (database ``postgres``, user ``postgres``,
    trust auth on 127.0.0.1), stopped at the end of the session."""
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on PATH or in "
                    "/usr/lib/postgresql/*/bin; install Debian's postgresql package")
    prefix, user = _runas()
    base = tempfile.mkdtemp(prefix="shardann-pg-")
    data = os.path.join(base, "data")
    if user is not None:
        os.chmod(base, 0o755)
        os.makedirs(data)
        os.chown(base, user.pw_uid, user.pw_gid)
        os.chown(data, user.pw_uid, user.pw_gid)
    port = free_port()
    log = os.path.join(base, "server.log")
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run(prefix + [os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres",
                             "--auth=trust", "-E", "UTF8", "--no-sync"],
                   check=True, env=env, capture_output=True, timeout=120)
    opts = (f"-p {port} -c listen_addresses=127.0.0.1 -k {base} -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off")
    start = subprocess.run(prefix + [os.path.join(bindir, "pg_ctl"), "-D", data, "-l", log,
                                     "-o", opts, "-w", "-t", "60", "start"],
                           env=env, capture_output=True, text=True, timeout=90)
    if start.returncode:
        with open(log) as f:
            raise RuntimeError(f"pg_ctl start failed: {start.stderr}\n{f.read()}")
    try:
        yield f"host=127.0.0.1 port={port} dbname=postgres user=postgres"
    finally:
        subprocess.run(prefix + [os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "fast",
                                 "-w", "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
