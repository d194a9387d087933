"""A hook's command on a Linux server over SSH (docs/HOOKS.md), idempotent on the host itself.

The command runs as root under `timeout`, through a small wrapper that keeps its exit code and output under
/var/tmp/patchaas-hooks/<key>: a repeat with the same key (the engine asking again after a crash) prints what the
first run left instead of running it again; while that first run is still going (its lock directory exists and no
exit code yet) the wrapper answers BUSY and the engine asks again later.
"""

from __future__ import annotations

import base64
import shlex

from orchestrator.ports import FleetError
from schemas.hooks import MAX_OUTPUT, CommandResult

STATE_DIR = "/var/tmp/patchaas-hooks"
_TEMPLATE = r"""set -u
key="$1"; limit="$2"; dir=__DIR__
mkdir -p "$dir" && chmod 700 "$dir" || exit 3
if [ ! -f "$dir/$key.rc" ]; then
  if ! mkdir "$dir/$key.lock" 2>/dev/null; then echo "PATCHAAS_HOOK BUSY"; exit 0; fi
  printf '%s' "$3" | base64 -d > "$dir/$key.sh"
  timeout "$limit" sh "$dir/$key.sh" > "$dir/$key.out" 2>&1 < /dev/null
  echo $? > "$dir/$key.rc.tmp" && mv "$dir/$key.rc.tmp" "$dir/$key.rc"
fi
head -c 4000 "$dir/$key.out"
echo
echo "PATCHAAS_HOOK RC $(cat "$dir/$key.rc")"
"""


def wrapper(state_dir: str = STATE_DIR) -> str:
    """The wrapper script (sent on stdin), keeping its runs under `state_dir` on the host."""
    return _TEMPLATE.replace("__DIR__", shlex.quote(state_dir))


WRAPPER = wrapper()
TIMED_OUT = 124  # timeout(1)'s exit code when it stopped the command


def invocation(key: str, command: str, timeout: float) -> str:
    """The remote command line (the wrapper itself is sent on stdin)."""
    encoded = base64.b64encode(command.encode()).decode()
    safe_key = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return f"sh -s -- {shlex.quote(safe_key)} {max(1, int(timeout))} {shlex.quote(encoded)}"


def parse(server: str, out: str) -> CommandResult:
    """The wrapper's answer as a CommandResult; FleetError while the first run of the key is still going."""
    lines = out.rstrip("\n").split("\n")
    last = lines[-1] if lines else ""
    if last == "PATCHAAS_HOOK BUSY":
        raise FleetError(f"{server}: the hook's command is still running from an earlier attempt")
    if not last.startswith("PATCHAAS_HOOK RC "):
        raise FleetError(f"{server}: unexpected answer from the hook wrapper: {out.strip()[-200:]!r}")
    code = int(last.removeprefix("PATCHAAS_HOOK RC ").strip() or "-1")
    output = "\n".join(lines[:-1]).rstrip("\n")[:MAX_OUTPUT]
    return CommandResult(exit_code=code, output=output, timed_out=code == TIMED_OUT)
