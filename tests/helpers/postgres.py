"""A throwaway PostgreSQL server for tests (no tests here): ``initdb`` in a tmp dir, served on 127.0.0.1.

The server binaries come from Debian's ``postgresql`` package (``make test`` installs it when missing). PostgreSQL
refuses to run as root, so when the tests run as root the cluster belongs to the ``postgres`` OS user the
package creates, and the commands run through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TOOLS = ("initdb", "pg_ctl")


class PostgresUnavailable(RuntimeError):
    """Why no test server can be started here (raised before anything was started)."""


def find_bin_dir() -> Path:
    """Returns the directory holding ``initdb`` and ``pg_ctl``: the PATH first, then /usr/lib/postgresql/*/bin.

    Raises:
        PostgresUnavailable: when neither has them.
    """
    on_path = [shutil.which(tool) for tool in _TOOLS]
    if all(on_path):
        return Path(os.path.realpath(on_path[0])).parent  # type: ignore[arg-type]
    # Debian keeps the server tools off the PATH, one directory per major version: take the newest.
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name.split(".")[0]), reverse=True
    )
    for candidate in candidates:
        if all((Path(candidate) / tool).is_file() for tool in _TOOLS):
            return Path(candidate)
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) are not on PATH nor in /usr/lib/postgresql/*/bin; "
        "install them with `apt-get install postgresql` (`make test` does so when it can)."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _runner() -> tuple[list[str], int | None, int | None]:
    """The command prefix that runs a server tool, and the uid/gid that must own the cluster's files."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError as error:
        raise PostgresUnavailable(
            "running as root, PostgreSQL needs an unprivileged OS user and there is no `postgres` user; "
            "the Debian `postgresql` package creates it."
        ) from error
    runuser = shutil.which("runuser")
    if runuser is not None:
        return [runuser, "-u", "postgres", "--"], user.pw_uid, user.pw_gid
    su = shutil.which("su")
    if su is None:
        raise PostgresUnavailable("running as root, but neither `runuser` nor `su` is there to drop to `postgres`.")
    return [su, "postgres", "-s", "/bin/sh", "-c", '"$0" "$@"'], user.pw_uid, user.pw_gid


def _run(command: list[str], timeout: float) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(command)}` exited with {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )


@contextmanager
def postgres_server(database: str = "tetra") -> Iterator[str]:
    """Starts a PostgreSQL cluster on 127.0.0.1 (a free port), creates ``database``, yields its SQLAlchemy URL.

    The cluster lives in a temporary directory (its unix socket too) and is stopped and deleted on exit.

    Args:
        database: name of the database to create.

    Yields:
        ``postgresql+psycopg2://postgres@127.0.0.1:<port>/<database>`` (local connections are trusted).

    Raises:
        PostgresUnavailable: when the binaries or the OS user are missing.
    """
    bin_dir = find_bin_dir()
    prefix, uid, gid = _runner()
    root = Path(tempfile.mkdtemp(prefix="tetra-pg-"))
    data, sockets, logfile = root / "data", root / "run", root / "server.log"
    sockets.mkdir()
    if uid is not None:
        for path in (root, sockets):
            os.chown(path, uid, gid)  # type: ignore[arg-type]
    port = _free_port()
    started = False
    try:
        try:
            _run(prefix + [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                           "--no-sync", "--locale=C"], timeout=120)
            options = (f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c synchronous_commit=off "
                       "-c max_connections=50")
            _run(prefix + [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-o", options, "-w",
                           "-t", "60", "start"], timeout=90)
            started = True
            _create_database(port, database)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            log = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
            raise RuntimeError(f"Could not start the test PostgreSQL server: {error}\nserver log:\n{log}") from error
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}"
    finally:
        if started:
            subprocess.run(prefix + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)


def create_database(url: str, database: str) -> str:
    """Creates another, empty database on the server of ``url`` and returns its URL."""
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    _create_database(port, database)
    return url.rsplit("/", 1)[0] + f"/{database}"


def _create_database(port: int, database: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{database}"')
    finally:
        connection.close()
