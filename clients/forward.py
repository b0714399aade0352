"""Forward chosen alerts to another tool: run a command, or POST JSON to a URL.

The command is split like a shell would (``shlex``) but never run through a shell,
and the event reaches it as environment variables and as JSON on standard input, so
a message text can never be executed. A command that fails or hangs is reported and
skipped; the next event is still forwarded.

Environment given to the command::

    LITHOSCOPE_EVENT_KIND, LITHOSCOPE_EVENT_T_S, LITHOSCOPE_EVENT_FRAME,
    LITHOSCOPE_EVENT_MAGNITUDE, LITHOSCOPE_EVENT_MESSAGE, LITHOSCOPE_SESSION_ID
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from lithoscope.service.errors import ConfigError
from lithoscope.service.protocol import Event, EventKind

__all__ = ["Forwarder", "Outcome", "parse_kinds"]

log = logging.getLogger(__name__)


def parse_kinds(text: str | Iterable[str]) -> frozenset[str]:
    """``contact_made,contact_lost`` (or ``all``) -> validated event kinds."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [item.strip() for item in items if item.strip()]
    known = {k.value for k in EventKind}
    if names == ["all"]:
        return frozenset(known)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(f"Expected event kinds among {', '.join(sorted(known))} (or 'all'). "
                          f"Got {', '.join(unknown) or 'nothing'}.")
    return frozenset(names)


def parse_url(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"Expected an http:// or https:// URL. Got {url!r}.")
    return url


@dataclass(frozen=True)
class Outcome:
    """What happened to one forwarded event."""

    kind: str
    frame: int
    target: str
    ok: bool
    detail: str


def event_json(event: Event) -> bytes:
    payload = {"type": event.TYPE.value, **asdict(event)}
    return json.dumps(payload).encode()


class Forwarder:
    """Runs ``command`` and/or posts to ``url`` for each event of the chosen kinds.

    Parameters
    ----------
    kinds
        Event kinds to forward (see :func:`parse_kinds`).
    command
        A command line, e.g. ``notify-send lithoscope``; run once per event.
    url
        An http(s) URL receiving the event as a JSON POST (a chat webhook, a LIMS).
    timeout_s
        How long one command or request may take before it is given up.
    """

    def __init__(self, kinds: Iterable[str], *, command: str | None = None,
                 url: str | None = None, timeout_s: float = 10.0) -> None:
        if command is None and url is None:
            raise ConfigError("Expected --run COMMAND or --url URL (or both).")
        self.kinds = parse_kinds(list(kinds))
        self.argv = shlex.split(command) if command is not None else None
        if self.argv is not None and not self.argv:
            raise ConfigError("Expected a command to run. Got an empty one.")
        self.url = parse_url(url) if url is not None else None
        self.timeout_s = timeout_s

    def handle(self, event: Event) -> list[Outcome]:
        """Forward one event if its kind was chosen; what happened, per target."""
        if event.kind not in self.kinds:
            return []
        outcomes = []
        if self.argv is not None:
            outcomes.append(self._run(event, self.argv))
        if self.url is not None:
            outcomes.append(self._post(event, self.url))
        for o in outcomes:
            if not o.ok:
                log.warning("Forwarding %s (frame %d) to %s failed: %s", o.kind, o.frame,
                            o.target, o.detail)
        return outcomes

    def _run(self, event: Event, argv: list[str]) -> Outcome:
        env = {
            **os.environ,
            "LITHOSCOPE_EVENT_KIND": event.kind,
            "LITHOSCOPE_EVENT_T_S": f"{event.t_s:.3f}",
            "LITHOSCOPE_EVENT_FRAME": str(event.frame),
            "LITHOSCOPE_EVENT_MAGNITUDE": repr(event.magnitude),
            "LITHOSCOPE_EVENT_MESSAGE": event.message,
            "LITHOSCOPE_SESSION_ID": event.session_id,
        }
        target = argv[0]
        try:
            done = subprocess.run(argv, input=event_json(event), env=env, capture_output=True,
                                  timeout=self.timeout_s, check=False)
        except FileNotFoundError:
            return Outcome(event.kind, event.frame, target, False, "command not found")
        except subprocess.TimeoutExpired:
            return Outcome(event.kind, event.frame, target, False,
                           f"no exit within {self.timeout_s:g} s (killed)")
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            return Outcome(event.kind, event.frame, target, False,
                           f"exit status {done.returncode} {tail[0]}".strip())
        return Outcome(event.kind, event.frame, target, True, "ok")

    def _post(self, event: Event, url: str) -> Outcome:
        request = urllib.request.Request(url, data=event_json(event), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            return Outcome(event.kind, event.frame, url, False, f"HTTP {exc.code}")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return Outcome(event.kind, event.frame, url, False, str(reason))
        return Outcome(event.kind, event.frame, url, True, f"HTTP {status}")
