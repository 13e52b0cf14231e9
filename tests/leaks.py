"""The suite's secret watch: no secret reaches a log line, anywhere in a test run.

Issue 14 promises that tokens, SRTP keys, AudioSocket ids and webhook secrets never appear
in logs. Rather than a handful of tests that look at the lines they expect, the whole run is
watched: every log record of the test process (at the levels ``serve`` logs at) and every
file a ``callvault`` subprocess wrote its output to are kept, and at the end of the session
they are searched

* for every secret the run made or sealed: the functions that mint tokens, SRTP keys and
  AudioSocket ids, and the one that seals webhook secrets, are wrapped for the session
  (``remember`` is how a test adds one it chose itself, such as a configured operator
  token), in the forms a secret could be written in (as made, base64, hex);
* for anything shaped like a token (``cv_`` and 43 URL-safe characters) or an SDES key
  (``inline:`` and base64), whoever made it: subprocess gateways mint secrets this process
  never sees being made.

A leak fails the run (``pytest_sessionfinish`` in ``tests/conftest.py``) with where it was
and what kind of secret, never the secret itself.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHAPES: dict[str, re.Pattern[str]] = {
    "token": re.compile(r"(?<![A-Za-z0-9_-])cv_[A-Za-z0-9_-]{40,}"),
    "SRTP key": re.compile(r"inline:[A-Za-z0-9+/]{38,}={0,2}"),
}
"""What a secret looks like, whoever made it."""

_WORD = re.compile(r"[A-Za-z0-9_-]+")
"""A run of URL-safe characters: a token, a UUID, a hex string, a URL-safe base64 value."""
_BASE64_WORD = re.compile(r"[A-Za-z0-9+/]+={0,2}")
"""A run of standard base64."""

BOOTSTRAP_BANNER = re.compile(
    r"this is the operator token\..*?\n\s+\S+\n.*?CALLVAULT_OPERATOR_TOKEN=\S+", re.DOTALL
)
"""``serve``'s first start prints the operator token it minted, once, on stdout: the one
place the contract says a secret is shown (README, API.md). It is cut out before a
subprocess's output is searched."""

QUIET_LOGGERS = ("alembic", "botocore", "aiohttp.access", "asyncio", "sqlalchemy", "aiosqlite")
"""Loggers ``serve`` keeps at WARNING (``gateway.logs.configure_logging``), plus libraries
whose INFO/DEBUG chatter is not ours; the root logger is watched from INFO, as ``serve``
logs."""


@dataclass(frozen=True)
class Leak:
    kind: str
    where: str

    def __str__(self) -> str:
        return f"a {self.kind} in {self.where}"


class SecretWatch:
    """The secrets a run made and the log output it produced; ``leaks()`` compares them."""

    def __init__(self) -> None:
        self._words: dict[str, str] = {}  # a secret written as one word -> its kind
        self._phrases: dict[str, str] = {}  # a secret with other characters -> its kind
        self._lines: list[tuple[str, str]] = []  # (logger name, formatted record)
        self._files: list[Path] = []
        self._outputs: list[tuple[str, str]] = []

    # -- what the run made ------------------------------------------------------------------

    def remember(self, kind: str, secret: str | bytes) -> None:
        """Watch for ``secret`` (and its base64 and hex forms when it is bytes)."""
        forms = (
            [base64.b64encode(secret).decode(), secret.hex()]
            if isinstance(secret, bytes)
            else [secret]
        )
        for form in forms:
            if len(form) < 8:  # shorter values would match by chance
                continue
            if _WORD.fullmatch(form) or _BASE64_WORD.fullmatch(form):
                self._words[form] = kind
            else:
                self._phrases[form] = kind

    def remember_value(self, kind: str, secret: str) -> str:
        """``remember`` that returns the secret, for use in an expression."""
        self.remember(kind, secret)
        return secret

    def taking(self, kind: str, use: Callable[..., Any], position: int) -> Any:
        """``use`` wrapped so that its argument at ``position`` (a secret it is handed, such
        as a webhook secret it seals) is remembered."""

        @functools.wraps(use)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.remember(kind, args[position])
            return use(*args, **kwargs)

        return wrapper

    def minting(self, kind: str, mint: Callable[..., Any], secret_of: Callable[[Any], Any]) -> Any:
        """``mint`` wrapped so that what it returns is remembered (``secret_of`` picks the
        secret out of the returned value)."""

        @functools.wraps(mint)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            made = mint(*args, **kwargs)
            self.remember(kind, secret_of(made))
            return made

        return wrapper

    # -- what the run logged ----------------------------------------------------------------

    def handler(self) -> logging.Handler:
        watch = self

        class _Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                try:
                    watch._lines.append((record.name, _everything(record, self)))
                except Exception:  # noqa: BLE001 - a record that cannot format is kept as text
                    watch._lines.append((record.name, repr(record.__dict__)))

        return _Keep(level=logging.DEBUG)

    def watch_file(self, path: Path) -> None:
        """Search ``path`` (a subprocess's output) at the end of the run."""
        self._files.append(path)

    def watch_output(self, text: str | None, command: str) -> str | None:
        """Keep a subprocess's captured output (``command`` names it) for the search;
        returns ``text``."""
        if text:
            self._outputs.append((command, BOOTSTRAP_BANNER.sub("", text)))
        return text

    # -- the verdict ------------------------------------------------------------------------

    def leaks(self) -> list[Leak]:
        found: list[Leak] = []
        for name, text in self._lines:
            found.extend(self._search(text, f"a log record of {name!r}"))
        for path in self._files:
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:  # its test's tmp dir was already removed
                continue
            text = BOOTSTRAP_BANNER.sub("", text)
            found.extend(self._search(text, f"the output of a subprocess ({path.name})"))
        for command, text in self._outputs:
            found.extend(self._search(text, f"the output of `callvault {command}`"))
        return list(dict.fromkeys(found))

    def _search(self, text: str, where: str) -> Iterator[Leak]:
        for kind, shape in SHAPES.items():
            if shape.search(text):
                yield Leak(kind, where)
        # Secrets are looked up by the words of the text (a set lookup each, however many
        # secrets a run made); the few that are not one word are searched for as such.
        for pattern in (_WORD, _BASE64_WORD):
            for word in pattern.findall(text):
                kind = self._words.get(word)
                if kind is not None:
                    yield Leak(kind, where)
        for secret, kind in self._phrases.items():
            if secret in text:
                yield Leak(kind, where)

    @property
    def counts(self) -> tuple[int, int, int]:
        """Secrets remembered, log records kept, files watched."""
        outputs = len(self._files) + len(self._outputs)
        return len(self._words) + len(self._phrases), len(self._lines), outputs


def _everything(record: logging.LogRecord, handler: logging.Handler) -> str:
    """The record as any formatter could write it: message, arguments, ``extra`` fields and
    the traceback."""
    parts = [record.getMessage(), repr(record.args), repr(record.__dict__)]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


WATCH = SecretWatch()
"""The watch of this test session (installed by ``tests/conftest.py``)."""


def install(watch: SecretWatch, *, logger: str = "") -> Callable[[], None]:
    """Wrap the gateway's secret minters and watch the root logger (or, for the watch's own
    tests, the named ``logger``, cut off from the root's); returns the undo."""
    from gateway import auth, calls
    from gateway.ingest.rtp import SrtpKey
    from storage import webhooksecret

    undo: list[Callable[[], None]] = []

    def wrap(owner: Any, name: str, kind: str, secret_of: Callable[[Any], Any]) -> None:
        original = owner.__dict__[name]
        if isinstance(original, classmethod):
            bound = watch.minting(kind, original.__func__, secret_of)
            setattr(owner, name, classmethod(bound))
        else:
            setattr(owner, name, watch.minting(kind, original, secret_of))
        undo.append(lambda: setattr(owner, name, original))

    wrap(auth, "new_secret", "token", lambda secret: secret)
    wrap(SrtpKey, "generate", "SRTP key", lambda key: key.material)
    wrap(calls, "new_audiosocket_id", "AudioSocket id", lambda id: id)
    # Every webhook secret the catalog is handed passes through ``_seal`` (positionally).
    original_seal = webhooksecret._seal
    webhooksecret._seal = watch.taking("webhook secret", original_seal, 0)
    undo.append(lambda: setattr(webhooksecret, "_seal", original_seal))

    watched = logging.getLogger(logger)
    handler = watch.handler()
    previous = watched.level, watched.propagate
    watched.addHandler(handler)
    watched.setLevel(logging.INFO)
    watched.propagate = not logger
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS if not logger else ():
        logging.getLogger(name).setLevel(logging.WARNING)

    def uninstall() -> None:
        for step in reversed(undo):
            step()
        watched.removeHandler(handler)
        watched.setLevel(previous[0])
        watched.propagate = previous[1]
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)

    return uninstall
