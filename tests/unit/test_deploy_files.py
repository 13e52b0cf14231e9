"""The fleet's deployment files (``deploy/``) and guide (``docs/deploy.md``) say only what
callvault does.

A unit file that systemd cannot read, a setting the code does not know, a command line that
names no ``callvault`` command, or a limit that no longer covers what ``serve`` needs would
each stop a fleet built from the guide, and nothing else would notice: no test starts these
units. So: every unit parses (and passes ``systemd-analyze verify`` where systemd is
installed); every ``CALLVAULT_*`` name in them, in the environment files and in the guide is
a setting; every command line runs a real command with flags the CLI takes; the environment
files are valid settings; and the stop timeout, the file limit and the OOM policy cover what
the code does on stop, with its connections, and when a worker dies.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from crypto.vaultkeys import policy
from gateway.cli import _parser
from gateway.connections import FD_MARGIN
from gateway.nodes import NodeAddresses
from gateway.settings import Settings
from gateway.workers import KILL_WAIT_S, STOP_GRACE_S
from tests.unit.test_settings import variable_names

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
GUIDE = ROOT / "docs" / "deploy.md"
GATEWAY_UNIT = DEPLOY / "callvault-gateway@.service"
WORKER_UNIT = DEPLOY / "callvault-worker@.service"
UNITS = [GATEWAY_UNIT, WORKER_UNIT]
DROP_INS = [DEPLOY / "gpu.conf"]
ENV_FILES = {
    "/etc/callvault/callvault.env": DEPLOY / "callvault.env.example",
    "/etc/callvault/gateway-%i.env": DEPLOY / "gateway.env.example",
    "/etc/callvault/worker.env": DEPLOY / "worker.env.example",
}
SECTIONS = {"Unit", "Service", "Install"}
NAME = re.compile(r"CALLVAULT_[A-Z0-9_]+")

Unit = dict[str, list[tuple[str, str]]]


def read_unit(path: Path) -> Unit:
    """A unit file as systemd reads it: sections of ``Key=value`` lines, keys that may repeat,
    comments (``#``, ``;``) and lines continued by a trailing backslash."""
    unit: Unit = {}
    section: str | None = None
    pending = ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}:{number}: {line!r}"
            section = line[1:-1]
            assert section in SECTIONS, f"{path.name}:{number}: unknown section {section}"
            unit.setdefault(section, [])
            continue
        key, sep, value = line.partition("=")
        assert section is not None, f"{path.name}:{number}: {line!r} before any section"
        assert sep and re.fullmatch(r"[A-Z][A-Za-z0-9]+", key), f"{path.name}:{number}: {line!r}"
        unit[section].append((key, value.strip()))
    assert pending == "", f"{path.name}: ends in a continued line"
    return unit


def values(unit: Unit, key: str, section: str = "Service") -> list[str]:
    return [value for name, value in unit.get(section, []) if name == key]


def value(unit: Unit, key: str, section: str = "Service") -> str:
    found = values(unit, key, section)
    assert len(found) == 1, f"{key}: {found}"
    return found[0]


def read_env_file(path: Path) -> dict[str, str]:
    """An ``EnvironmentFile=`` as systemd reads the lines these examples use: ``KEY=value``,
    comments, and a value in single or double quotes taken without them."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, val = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}: {line!r}"
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
            val = val[1:-1]
        env[key] = val
    return env


def callvault_argv(exec_line: str) -> list[str]:
    """The arguments after the ``callvault`` executable in an ``Exec*=`` line, direct or in
    the ``/bin/sh -c`` script that hands it the master key (up to a shell separator), with
    systemd's ``%S``/``%i`` filled in as for an instance ``1``."""
    line = exec_line.lstrip("-@:+!").replace("%S", "/var/lib").replace("%i", "1")
    words = shlex.split(line.replace("$$", "$"))
    if Path(words[0]).name == "sh" and words[1] == "-c":
        words = shlex.split(words[2], posix=True)
    executables = [i for i, word in enumerate(words) if Path(word).name == "callvault"]
    assert executables, f"no callvault command in {exec_line!r}"
    argv = []
    for word in words[executables[0] + 1 :]:
        if word in (";", "&&", "||", "|"):
            break
        argv.append(word)
    return argv


def documented_names() -> dict[str, list[str]]:
    """Every ``CALLVAULT_*`` name in deploy/ and docs/deploy.md, with the files it is in."""
    found: dict[str, list[str]] = {}
    for path in [GUIDE, *sorted(DEPLOY.iterdir())]:
        for name in set(NAME.findall(path.read_text())):
            found.setdefault(name, []).append(path.name)
    return found


@pytest.mark.parametrize("path", UNITS + DROP_INS, ids=lambda path: path.name)
def test_every_unit_file_parses(path: Path) -> None:
    unit = read_unit(path)
    assert "Service" in unit
    if path in UNITS:
        assert value(unit, "Type") == "exec"
        assert value(unit, "WantedBy", "Install") == "multi-user.target"


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_systemd_verifies_every_unit(path: Path, tmp_path: Path) -> None:
    """``systemd-analyze verify`` of the template as installed (systemd reads its drop-ins
    from a directory beside it). Only this part needs systemd on the machine."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the units' own parse is checked above")
    shutil.copy(path, tmp_path / path.name)
    if path == WORKER_UNIT:
        drop_ins = tmp_path / f"{path.name}.d"
        drop_ins.mkdir()
        for drop_in in DROP_INS:
            shutil.copy(drop_in, drop_ins / drop_in.name)
    run = subprocess.run(  # noqa: S603 - a fixed program on our own files
        [analyze, "verify", str(tmp_path / path.name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # systemd logs an unknown key or a bad value and goes on; either is a unit that does not
    # do what it says, so any word from it fails the test.
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


def test_systemd_verify_is_not_blind(tmp_path: Path) -> None:
    """The check above would pass a unit systemd ignores half of if verify said nothing."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    broken = tmp_path / "broken@.service"
    broken.write_text(GATEWAY_UNIT.read_text().replace("KillMode=mixed", "KillMode=mixd"))
    run = subprocess.run(  # noqa: S603 - a fixed program on our own file
        [analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "kill mode" in run.stdout + run.stderr


def test_every_setting_named_in_deploy_and_the_guide_exists() -> None:
    settings = set(variable_names(Settings))
    found = documented_names()
    assert "CALLVAULT_NODE__PUBLIC_HOST" in found and "CALLVAULT_KEYS__PROVIDER" in found
    unknown = {
        name: files
        for name, files in found.items()
        if not (
            name in settings
            # `CALLVAULT_STORE__*` in prose: a section, some of whose settings exist
            or (name.endswith("__") and any(s.startswith(name) for s in settings))
        )
    }
    assert unknown == {}


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_every_command_line_runs_a_real_callvault_command(path: Path) -> None:
    unit = read_unit(path)
    lines = [v for key, v in unit["Service"] if key.startswith("Exec") and key != "ExecReload"]
    assert lines
    commands = set()
    for line in lines:
        argv = callvault_argv(line)
        args = _parser().parse_args(argv)  # exits (SystemExit) on an unknown command or flag
        commands.add(args.command)
        assert args.data_dir == Path("/var/lib/callvault") / (
            "1" if path == GATEWAY_UNIT else "worker-1"
        )
        assert f"callvault/{'' if path == GATEWAY_UNIT else 'worker-'}%i" == value(
            unit, "StateDirectory"
        ), "the data dir is the one StateDirectory= makes writable"
    assert commands == {"serve" if path == GATEWAY_UNIT else "worker"}


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_the_master_key_reaches_callvault_master_key_from_the_credential(path: Path) -> None:
    unit = read_unit(path)
    credential = value(unit, "LoadCredential").split(":", 1)
    assert credential == ["master-key", "/etc/callvault/master.key"]
    start = value(unit, "ExecStart")
    assert '"$${CREDENTIALS_DIRECTORY}/master-key"' in start
    assert "export CALLVAULT_MASTER_KEY" in start
    assert "CALLVAULT_MASTER_KEY" in variable_names(Settings)


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_every_environment_file_has_its_example_and_the_examples_are_valid_settings(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unit = read_unit(path)
    files = [v.lstrip("-") for v in values(unit, "EnvironmentFile")]
    assert files[0] == "/etc/callvault/callvault.env"
    known = set(variable_names(Settings))
    for file in files:
        env = read_env_file(ENV_FILES[file])
        assert set(env) <= known
        for name, val in env.items():
            monkeypatch.setenv(name, val)
    settings = Settings()  # raises, naming the setting, on a value the code refuses
    assert settings.keys.provider != "local", "a fleet cannot keep its keys in one data dir"
    assert settings.database_url is not None and settings.database_url.startswith("postgresql")
    assert settings.store_url.startswith("s3://")
    if path == GATEWAY_UNIT:
        assert settings.node.id == "gw1" and settings.node.public_host
        assert settings.ai.workers == 0
        assert [str(n) for n in settings.audiosocket.allow_networks] == ["10.0.1.0/24"]


def test_the_gateways_file_limit_covers_its_connections_and_rtp_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As ``gateway.connections.raise_file_limit`` counts them: out of descriptors, asyncio's
    accept loop stalls every listener."""
    for file in ("/etc/callvault/callvault.env", "/etc/callvault/gateway-%i.env"):
        for name, val in read_env_file(ENV_FILES[file]).items():
            monkeypatch.setenv(name, val)
    settings = Settings()
    ports = settings.rtp.port_max - settings.rtp.port_min + 1
    needed = (
        settings.http.max_connections + settings.audiosocket.max_connections + ports + FD_MARGIN
    )
    assert int(value(read_unit(GATEWAY_UNIT), "LimitNOFILE")) >= needed


def test_the_stop_timeouts_cover_what_serve_and_worker_do_on_sigterm() -> None:
    """systemd sends SIGKILL after TimeoutStopSec. serve's drain: aiohttp's shutdown timeout,
    then its worker children's grace and reap; a worker hands its job back within the same
    grace. Only serve gets the SIGTERM (it stops its children itself), and only once (a
    second one cuts the drain short)."""
    shutdown = re.search(r"shutdown_timeout=(\d+)", (ROOT / "gateway" / "cli.py").read_text())
    assert shutdown is not None
    gateway = read_unit(GATEWAY_UNIT)
    drain = int(shutdown.group(1)) + STOP_GRACE_S + KILL_WAIT_S
    assert int(value(gateway, "TimeoutStopSec")) >= drain + 30  # + finalizing live calls
    assert value(gateway, "KillMode") == "mixed"
    assert value(gateway, "KillSignal") == "SIGTERM"
    worker = read_unit(WORKER_UNIT)
    assert int(value(worker, "TimeoutStopSec")) >= STOP_GRACE_S
    assert value(worker, "KillSignal") == "SIGTERM"


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_restarts_and_oom_follow_the_process_model(path: Path) -> None:
    """A refused start (exit 2, a setting at fault) is not retried in a loop; anything else
    is, without end. A worker killed by the OOM killer takes only itself down: systemd's default
    OOMPolicy=stop would stop the whole unit, serve and its ingest included."""
    unit = read_unit(path)
    assert value(unit, "Restart") == "on-failure"
    assert value(unit, "RestartPreventExitStatus") == "2"
    # A catalog down at start is exit 1, every few seconds: systemd must not give up on it.
    assert value(unit, "StartLimitIntervalSec", "Unit") == "0"
    assert value(unit, "OOMPolicy") == "continue"


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_units_are_hardened(path: Path) -> None:
    unit = read_unit(path)
    hardening = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }
    assert {key: value(unit, key) for key in hardening} == hardening
    assert value(unit, "User") == "callvault"
    # ProtectSystem=strict leaves only the data dir writable: nothing else is asked for.
    assert values(unit, "ReadWritePaths") == []


def test_the_gpu_drop_in_shows_the_gpu_and_asks_for_cuda() -> None:
    gpu = read_unit(DEPLOY / "gpu.conf")
    assert value(gpu, "PrivateDevices") == "no"
    assert value(gpu, "Environment") == "CALLVAULT_AI__DEVICE=cuda"


def test_the_admin_script_runs_callvault_as_the_units_do() -> None:
    """``callvault-admin`` is valid shell, executable, and uses the units' environment file,
    master key file and executable (so a maintenance command sees the fleet the nodes see)."""
    script = DEPLOY / "callvault-admin"
    assert script.stat().st_mode & 0o111
    sh = shutil.which("sh")
    assert sh is not None
    check = subprocess.run([sh, "-n", str(script)], capture_output=True, text=True, check=False)  # noqa: S603
    assert (check.returncode, check.stderr) == (0, "")
    text = script.read_text()
    unit = read_unit(GATEWAY_UNIT)
    assert f". {values(unit, 'EnvironmentFile')[0]}\n" in text
    assert value(unit, "LoadCredential").split(":", 1)[1] in text
    executable = re.search(r"exec (/\S+/callvault) ", value(unit, "ExecStart"))
    assert executable is not None and f"{executable.group(1)} --data-dir=" in text


def test_the_guide_gives_the_vault_policy_that_the_provider_checks() -> None:
    """The policy docs/deploy.md hands the operator is the one ``crypto.vaultkeys`` checks
    at start: a token of another one (``create`` on ``encrypt/``, a missing capability)
    would stop every node of a fleet built from the guide."""
    assert policy() in GUIDE.read_text()


def test_the_gateway_example_announces_a_wss_url_that_its_nginx_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind nginx, the announcement's ``ingest.websocket_url`` names the node's public host
    and callvault's own port: the example makes it ``wss://``, and the guide and the nginx
    configuration have nginx listen with TLS on that port of the node's address."""
    for file in (DEPLOY / "callvault.env.example", DEPLOY / "gateway.env.example"):
        for name, val in read_env_file(file).items():
            monkeypatch.setenv(name, val)
    settings = Settings()
    url = NodeAddresses.of(settings).websocket_url("/v1/ingest/fork")
    port = settings.http.port
    assert url == f"wss://{settings.node.public_host}:{port}/v1/ingest/fork"
    listen = f"listen {settings.rtp.host}:{port} ssl;"
    assert listen in GUIDE.read_text()
    assert listen in (ROOT / "docs" / "deploy" / "nginx.conf").read_text()
    assert NodeAddresses.of(settings).rtp_host == settings.rtp.advertise_host == settings.rtp.host
