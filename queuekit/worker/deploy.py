"""Configs that run workers under a process supervisor: ``worker deploy supervisor|systemd``.

Both print text for the user to install; neither talks to supervisord or systemd.

supervisord runs the P processes itself (``numprocs``) instead of one ``worker run --processes
P``: it already restarts, logs and stops each process and lists each in ``supervisorctl
status``, so a supervisor inside it would only add a second restart policy and hide the
children from it. A worker that ends on a limit exits and supervisord starts it again
(``autorestart=true``).

systemd has no ``numprocs`` (a template unit would need one instance per process), so its unit
runs ``worker run --processes P`` and ``KillMode=mixed`` sends SIGTERM to that supervisor
alone, which hands it on to its children; at ``TimeoutStopSec`` systemd kills what is left.
Exit status 2 (bad configuration) is not restarted: a restart cannot fix it.

The worker's command line always carries ``--shutdown-timeout`` (``worker deploy`` adds
:data:`DEFAULT_SHUTDOWN_TIMEOUT` when it is not given), and both configs wait that plus
:data:`STOP_MARGIN` before SIGKILL, so a worker at its deadline still has time to hand back
what it holds and close its connection.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .supervisor import EXIT_CONFIG, without_options

DEFAULT_SHUTDOWN_TIMEOUT = 30.0  # seconds; the stop wait when --shutdown-timeout is not given
STOP_MARGIN = 10.0  # seconds beyond the shutdown timeout before the supervisor kills
#: ``worker deploy`` options that are not ``worker run``'s (the URL goes to the environment).
DEPLOY_OPTIONS = {"--name": True, "--directory": True, "--log-dir": True, "--user": True,
                  "--url": True}  # fmt: skip


def worker_command(
    executable: str, class_path: str, run_options: Sequence[str], *, supervisord: bool
) -> list[str]:
    """``EXECUTABLE run CLASS`` and the ``worker run`` options of a ``worker deploy`` command
    line; supervisord starts the processes itself, so ``--processes`` is left out for it."""
    not_passed = dict(DEPLOY_OPTIONS, **({"--processes": True} if supervisord else {}))
    return [executable, "run", class_path, *without_options(run_options, not_passed)]


@dataclass(frozen=True)
class Deployment:
    """What both configs say: ``command`` is the whole ``worker run`` command line, with the
    absolute path of the executable."""

    name: str  # the supervisord program / systemd unit name
    what: str  # the queue class path, for the description
    command: list[str]
    processes: int
    directory: str
    shutdown_timeout: float
    log_dir: str
    url: str | None = None  # becomes QUEUEKIT_URL in the environment
    user: str | None = None

    @property
    def stop_wait(self) -> int:
        return math.ceil(self.shutdown_timeout + STOP_MARGIN)


def _header(deployment: Deployment, how: str) -> list[str]:
    lines = [f"# queuekit worker for {deployment.what}: {how}"]
    if deployment.url and urlsplit(deployment.url).password:
        lines.append("# It holds the broker URL with its password: make it readable by root only.")
    return lines


def supervisor_program(deployment: Deployment) -> str:
    """A supervisord ``[program:...]`` section (``%`` doubled: supervisord expands it)."""
    name, logs = deployment.name, deployment.log_dir.rstrip("/")
    command = shlex.join(deployment.command).replace("%", "%%")
    lines = _header(deployment, f"{deployment.processes} process(es) run by supervisord")
    lines += [
        f"[program:{name}]",
        f"command={command}",
        "process_name=%(program_name)s_%(process_num)02d",
        f"numprocs={deployment.processes}",
        f"directory={deployment.directory}",
        "autostart=true",
        "autorestart=true",
        "startsecs=2",
        "stopsignal=TERM",
        f"stopwaitsecs={deployment.stop_wait}",
        "killasgroup=true",
        f"stdout_logfile={logs}/%(program_name)s_%(process_num)02d.out.log",
        f"stderr_logfile={logs}/%(program_name)s_%(process_num)02d.err.log",
    ]
    if deployment.user:
        lines.append(f"user={deployment.user}")
    if deployment.url:
        if '"' in deployment.url:
            raise ValueError("a URL with a double quote cannot go into a supervisord config")
        lines.append(f'environment=QUEUEKIT_URL="{deployment.url.replace("%", "%%")}"')
    return "\n".join(lines) + "\n"


def systemd_unit(deployment: Deployment) -> str:
    """A systemd service unit (``%`` and ``$`` escaped: systemd expands both)."""

    def escaped(text: str) -> str:
        return text.replace("%", "%%").replace("$", "$$")

    service = [
        "Type=exec",
        f"WorkingDirectory={escaped(deployment.directory)}",
        f"ExecStart={escaped(shlex.join(deployment.command))}",
        "Restart=always",
        "RestartSec=2",
        f"RestartPreventExitStatus={EXIT_CONFIG}",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        f"TimeoutStopSec={deployment.stop_wait}",
        f"SyslogIdentifier={deployment.name}",
    ]
    if deployment.user:
        service.append(f"User={deployment.user}")
    if deployment.url:
        service.append(f"Environment={shlex.quote('QUEUEKIT_URL=' + escaped(deployment.url))}")
    lines = _header(deployment, f"{deployment.processes} process(es) under `worker run`")
    lines += [
        "[Unit]",
        f"Description=queuekit worker: {deployment.what}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        *service,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
