"""The Linux update package: one POSIX-sh script that runs one cycle on the host, detached from the SSH
session, and writes a JSON report keyed by the cycle's idempotency key; and the pure functions the `ssh`
driver uses to build the commands it sends and to read what the host answers.

Nothing here does I/O: the driver (`workers/fleet/ssh.py`) runs the commands; the unit tests run the
script's parsing functions under `sh` on recorded outputs (`PATCHAAS_LIB_ONLY=1`).

One cycle on the host (`cycle.sh PM RUN_DIR KEY EXCLUDES…`):
  apt:      apt-get update → apt list --upgradable (+ packages dpkg left half-configured) → for each package
            not excluded: apt-get install --only-upgrade -y <pkg> → judge it by dpkg's state afterwards →
            reboot needed = /var/run/reboot-required (the packages in reboot-required.pkgs)
  dnf/yum:  check-update (exit 100 = updates) → for each not excluded: upgrade -y <pkg> --exclude=… →
            judge it by rpm's version afterwards → reboot needed = `needs-restarting -r` exit code 1
The report's free text (the package manager's output) is base64, so the sh script never has to escape
JSON strings; package names and versions are checked against a strict character set before they are
written.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shlex
from datetime import UTC, datetime
from typing import Any

from schemas.fleet import CycleReport, CycleState, PackageUpdate, ResultCode
from schemas.selection import SAFE_GLOB

RUNS_DIR = "/var/lib/patchaas/runs"
MAINTENANCE_FLAG = "/etc/patchaas/maintenance"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
DEFAULT_YUM_EXCLUDES = ("kernel*", "nss*")  # the original "Yum Update" excluded kernel and nss packages
MAX_OUTPUT = 8000  # characters of the package manager's output kept per failed package (its tail)
PACKAGE_MANAGERS = ("apt", "dnf", "yum")
_SAFE_PATTERN = SAFE_GLOB  # the rule a run's packageExclusions are validated with at request time

CYCLE_SCRIPT = r"""#!/bin/sh
# patchaas Linux update package: one cycle. Usage: cycle.sh apt|dnf|yum RUN_DIR KEY [EXCLUDE_GLOB...]
set -u
set -f  # exclusions are globs matched with `case`, never expanded against files
export LC_ALL=C DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l

b64() { base64 "$1" 2>/dev/null | tr -d '\n'; }
safe() { printf '%s' "$1" | grep -Eq '^[A-Za-z0-9][A-Za-z0-9+._~:@-]{0,99}$'; }
excluded() {  # is package $1 matched by one of the exclusion globs?
    for pat in $EXCLUDES; do
        case "$1" in $pat) return 0 ;; esac
    done
    return 1
}

# `apt list --upgradable` → "name from to" ("hello/local 1.1 amd64 [upgradable from: 1.0]")
apt_upgradable() {
    sed -n 's|^\([^/ ]*\)/[^ ]* \([^ ]*\) [^ ]* \[upgradable from: \([^]]*\)\]$|\1 \3 \2|p'
}
# dpkg-query -W -f='${db:Status-Abbrev}|${Package}|${Version}\n' → "name version version" for packages
# dpkg left half-configured/unpacked/half-installed/awaiting triggers (a failed postinst): retried
apt_broken() {
    awk -F'|' 'substr($1, 2, 1) ~ /[FUHWt]/ { print $2, $3, $3 }'
}
# `dnf check-update` → "name to" ("hello.x86_64   1.1-1   local"); stops at "Obsoleting Packages"; a name
# too long for its column is printed alone, its version and repository on the next line
dnf_upgradable() {
    awk '/^Obsoleting/ { exit }
         NF == 1 && $1 ~ /\./ { held = $1; next }
         NF == 2 && held != "" { $0 = held " " $0 }
         { held = "" }
         NF == 3 && $1 ~ /\./ && $2 ~ /-/ { n = $1; sub(/\.[^.]*$/, "", n); print n, $2 }'
}
# rpm has no half-configured state: a failed %post leaves the new version installed, and dnf exits 0
# ("Error in POSTIN scriptlet in rpm package …"). Such a package is a failed update, remembered in
# RPM_FAILED ("name version") and offered again next cycle (reinstalled: its scriptlets run again) while
# that version is still the installed one, as dpkg's half-configured packages are.
RPM_FAILED=/var/lib/patchaas/rpm-scriptlet-failed
rpm_scriptlet_failed() {
    grep -Eq 'scriptlet failed, exit status|^Error in [A-Z]+ scriptlet in rpm package' "$1"
}
dnf_broken() {
    [ -f "$RPM_FAILED" ] || return 0
    while read -r name version; do
        [ "$(rpm_version "$name")" = "$version" ] && printf '%s %s %s\n' "$name" "$version" "$version"
    done < "$RPM_FAILED"
    return 0
}
rpm_version() {
    rpm -q --qf '%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\n' "$1" 2>/dev/null | tail -n 1
}

# A refresh that could not fetch every source is a failed refresh: apt-get update exits 0 after network
# errors ("W: Failed to fetch …", "Err:" lines), and listing upgrades from stale or missing indexes would
# report "nothing to install" on a server that has updates. Tried 3 times (mirrors blip), then failed.
apt_fetch_failed() {
    grep -Eq '^(Err:|W: Failed to fetch|W: Some index files failed|E: )' "$1"
}
apt_refresh() {
    tries=0
    while :; do
        $APT update > refresh.log 2>&1; rc=$?
        if [ $rc -eq 0 ] && apt_fetch_failed refresh.log; then rc=100; fi
        tries=$((tries + 1))
        if [ $rc -eq 0 ] || [ $tries -ge "${PATCHAAS_REFRESH_TRIES:-3}" ]; then return $rc; fi
        cat refresh.log >> refresh.earlier.log
        sleep $((tries * ${PATCHAAS_REFRESH_BACKOFF:-5}))
    done
}

if [ "${PATCHAAS_LIB_ONLY:-}" = 1 ]; then return 0 2>/dev/null || exit 0; fi

PM=$1; RUN=$2; KEY=$3; shift 3
EXCLUDES="$*"
cd "$RUN" || exit 1
: > items; : > excluded.txt; mkdir -p out
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
RESULT=2; RC=0

if [ "$PM" = apt ]; then
    APT="apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
    apt_refresh; RC=$?
    if [ $RC -eq 0 ]; then
        apt list --upgradable 2>/dev/null | apt_upgradable > candidates
        dpkg-query -W -f='${db:Status-Abbrev}|${Package}|${Version}\n' 2>/dev/null | apt_broken >> candidates
    fi
else
    PMBIN=$PM; command -v "$PMBIN" >/dev/null 2>&1 || PMBIN=yum
    XARGS=""; for pat in $EXCLUDES; do XARGS="$XARGS --exclude=$pat"; done
    $PMBIN -q check-update > refresh.log 2>&1; RC=$?
    if [ $RC -eq 100 ] || [ $RC -eq 0 ]; then
        dnf_upgradable < refresh.log | while read -r name to; do
            printf '%s %s %s\n' "$name" "$(rpm_version "$name")" "$to"
        done > candidates
        dnf_broken >> candidates
        RC=0
    fi
fi
[ $RC -eq 0 ] || RESULT=4

if [ $RC -eq 0 ]; then
    sort -u candidates | while read -r name from to; do
        safe "$name" && safe "$from" && safe "$to" || continue
        if excluded "$name"; then echo "$name" >> excluded.txt; continue; fi
        if [ "$PM" = apt ]; then
            $APT install --only-upgrade "$name" > "out/$name" 2>&1; rc=$?
            state=$(dpkg-query -W -f='${db:Status-Abbrev}|${Version}' "$name" 2>/dev/null)
            now=${state#*|}
            case "$state" in "ii "*"|$to") ok=1 ;; *) ok=0 ;; esac
        else
            if [ "$from" = "$to" ]; then op=reinstall; else op=upgrade; fi  # reinstall: its scriptlet failed
            $PMBIN -y $op $XARGS "$name" > "out/$name" 2>&1; rc=$?
            now=$(rpm_version "$name")
            if [ $rc -eq 0 ] && rpm_scriptlet_failed "out/$name"; then
                rc=$(sed -n 's/.*scriptlet failed, exit status \([0-9][0-9]*\).*/\1/p' "out/$name" | head -n 1)
                rc=${rc:-1}
            fi
            if [ -f "$RPM_FAILED" ]; then awk -v n="$name" '$1 != n' "$RPM_FAILED" > "$RPM_FAILED.new"; fi
            if [ $rc -ne 0 ] && [ -n "$now" ]; then echo "$name $now" >> "$RPM_FAILED.new"; fi
            if [ -f "$RPM_FAILED.new" ]; then mv "$RPM_FAILED.new" "$RPM_FAILED"; fi
            if [ $rc -eq 0 ] && [ "${now#*:}" = "${to#*:}" ]; then ok=1; else ok=0; fi
        fi
        safe "$now" || now=""
        echo "$name $from $to $rc $ok $now" >> items
    done
fi

REBOOT=false; : > reboot-pkgs
if [ "$PM" = apt ]; then
    if [ -e /var/run/reboot-required ]; then REBOOT=true; cp /var/run/reboot-required.pkgs reboot-pkgs 2>/dev/null; fi
else  # exit code 1 = reboot needed, unless the command itself is missing (dnf-plugins-core not installed)
    if command -v needs-restarting >/dev/null 2>&1; then
        needs-restarting -r > needs-restarting.log 2>&1; nr=$?
    else
        $PMBIN -q needs-restarting -r > needs-restarting.log 2>&1; nr=$?
    fi
    if [ $nr -eq 1 ] && ! grep -Eqi 'no such command|unknown command|command not found' needs-restarting.log; then
        REBOOT=true
        sed -n 's/^ *\* \([^ ]*\) *$/\1/p' needs-restarting.log > reboot-pkgs  # "  * kernel"
    fi
fi

{
    printf '{"key": "%s", "package_manager": "%s", "started_at": "%s", "finished_at": "%s", ' \
        "$(printf '%s' "$KEY" | base64 | tr -d '\n')" "$PM" "$STARTED" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '"result_code": %s, "refresh_rc": %s, "refresh_output": "%s", "reboot_required": %s, ' \
        "$RESULT" "$RC" "$(b64 refresh.log)" "$REBOOT"
    printf '"reboot_packages": "%s", "excluded": "%s", "updates": [' "$(b64 reboot-pkgs)" "$(b64 excluded.txt)"
    sep=""
    while read -r name from to rc ok now; do
        printf '%s{"package": "%s", "from": "%s", "to": "%s", "rc": %s, "ok": %s, "now": "%s", "output": "%s"}' \
            "$sep" "$name" "$from" "$to" "$rc" "$ok" "${now:-}" "$(b64 "out/$name")"
        sep=", "
    done < items
    printf ']}\n'
} > report.json.tmp && mv report.json.tmp report.json
"""


def check_package_manager(pm: str) -> str:
    if pm not in PACKAGE_MANAGERS:
        raise ValueError(f"unknown package manager {pm!r}; known: {', '.join(PACKAGE_MANAGERS)}")
    return pm


def run_dir(key: str) -> str:
    """The host directory of the cycle started under `key` (its characters made filename-safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)
    if not safe or safe.startswith("."):
        raise ValueError(f"unusable idempotency key {key!r}")
    return f"{RUNS_DIR}/{safe}"


def exclusions(pm: str, exclude: tuple[str, ...], defaults: tuple[str, ...]) -> tuple[str, ...]:
    """The run's exclusions: the defaults for this package manager plus the run's own, each a safe glob."""
    chosen = tuple(dict.fromkeys((*defaults, *exclude)))
    for pattern in chosen:
        if not _SAFE_PATTERN.match(pattern):
            raise ValueError(f"unsafe package exclusion {pattern!r}")
    return chosen


def as_root(command: str, username: str) -> str:
    """`command` run by root: as is for root, through `sudo -n` (never a password prompt) otherwise."""
    return command if username == "root" else f"sudo -n sh -c {shlex.quote(command)}"


def invoke_command(pm: str, key: str, excludes: tuple[str, ...]) -> str:
    """Start the cycle unless `key` was started before; the script arrives on stdin. Prints STARTED or
    EXISTS. The cycle runs detached (nohup, own session) so this returns at once and survives the SSH
    connection; its pid and the boot id it started under are kept for `probe_command`."""
    check_package_manager(pm)
    run = run_dir(key)
    args = " ".join(shlex.quote(a) for a in (pm, run, key, *excludes))
    q = shlex.quote(run)
    return (
        f"mkdir -p {RUNS_DIR} && if ! mkdir {q} 2>/dev/null; then cat > /dev/null; echo EXISTS; exit 0; fi; "
        f"cat > {q}/cycle.sh && cat {BOOT_ID} > {q}/boot_id && date -u +%Y-%m-%dT%H:%M:%SZ > {q}/started_at "
        f"&& cd {q} || exit 1; nohup setsid sh ./cycle.sh {args} > {q}/cycle.log 2>&1 < /dev/null & "
        f"echo $! > {q}/pid; echo STARTED"
    )


def probe_command(key: str) -> str:
    """What the host knows of the cycle `key`: ABSENT, FINISHED + the report, or RUNNING + when it started,
    its boot id, whether its process lives and the current boot id."""
    q = shlex.quote(run_dir(key))
    # whether the process lives is read BEFORE looking for the report: the script writes its report, then
    # exits, so "dead and no report" means killed. Read the other way round, a cycle that finished between
    # the two reads looked killed (and was retried as aborted).
    return (
        f"if [ ! -d {q} ]; then echo ABSENT; else "
        f"p=$(cat {q}/pid 2>/dev/null); if [ -n \"$p\" ] && kill -0 \"$p\" 2>/dev/null; then life=alive; "
        f"else life=dead; fi; "
        f"if [ -f {q}/report.json ]; then echo FINISHED; cat {q}/report.json; "
        f"else echo RUNNING; cat {q}/started_at 2>/dev/null || echo; cat {q}/boot_id 2>/dev/null || echo; "
        f"echo $life; cat {BOOT_ID}; fi; fi"
    )


def status_command(pm: str) -> str:
    """Boot id, then whether a reboot is pending (`pending`/`none`)."""
    check_package_manager(pm)
    if pm == "apt":
        pending = "[ -e /var/run/reboot-required ]"
    else:
        # exit code 1 = reboot needed, unless the command is missing (dnf-plugins-core not installed)
        pending = ("{ o=$({ if command -v needs-restarting >/dev/null 2>&1; then needs-restarting -r; "
                   f"else {pm} -q needs-restarting -r; fi; }} 2>&1); [ $? -eq 1 ] && ! printf '%s' \"$o\" "
                   "| grep -Eqi 'no such command|unknown command|command not found'; }")
    return f"cat {BOOT_ID}; if {pending}; then echo pending; else echo none; fi"


def maintenance_command(on: bool, key: str) -> str:
    """The host's own maintenance flag: a file that monitoring agents and cron jobs can check."""
    if on:
        return (f"mkdir -p {shlex.quote(MAINTENANCE_FLAG.rsplit('/', 1)[0])} && "
                f"printf '%s\\n' {shlex.quote(key)} > {MAINTENANCE_FLAG}")
    return f"rm -f {MAINTENANCE_FLAG}"


REBOOTS_DIR = "/var/lib/patchaas/reboots"


def reboot_command(reboot: str, key: str) -> str:
    """Reboot a second from now, detached, so the SSH command returns before the connection drops; once
    per key: a marker on disk (it survives the reboot) makes a retried command, e.g. after the connection
    dropped before its answer arrived, a no-op instead of a second reboot."""
    marker = shlex.quote(f"{REBOOTS_DIR}/{run_dir(key).rsplit('/', 1)[1]}")
    return (f"mkdir -p {REBOOTS_DIR} && if [ -e {marker} ]; then echo DONE; else : > {marker} && "
            f"nohup sh -c {shlex.quote('sleep 1; ' + reboot)} > /dev/null 2>&1 < /dev/null & echo REBOOTING; fi")


class ProbeError(ValueError):
    """The host's answer could not be read."""


def parse_status(text: str) -> tuple[str, bool]:
    """(boot id, reboot pending) from `status_command`'s output."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 2 or lines[1] not in ("pending", "none"):
        raise ProbeError(f"unexpected status answer {text[:200]!r}")
    return lines[0], lines[1] == "pending"


def parse_probe(text: str, key: str, now: datetime) -> CycleReport | None:
    """The CycleReport for `key` from `probe_command`'s output. A cycle whose process is gone without a
    report (killed, or the host rebooted under it) is reported finished and ABORTED, so the run retries
    it instead of waiting for its deadline."""
    head, _, rest = text.lstrip().partition("\n")
    match head.strip():
        case "ABSENT":
            return None
        case "FINISHED":
            return parse_report(rest, key)
        case "RUNNING":
            lines = [line.strip() for line in rest.splitlines()]
            lines += [""] * (4 - len(lines))
            started = _time(lines[0]) or now
            started_boot, alive, boot = lines[1], lines[2] == "alive", lines[3]
            if alive and started_boot == boot:
                return CycleReport(key=key, state=CycleState.RUNNING, started_at=started)
            return CycleReport(key=key, state=CycleState.FINISHED, started_at=started, finished_at=now,
                               result_code=ResultCode.ABORTED)
    raise ProbeError(f"unexpected answer about cycle {key}: {text[:200]!r}")


def parse_report(text: str, key: str) -> CycleReport:
    """A finished cycle's report.json as a CycleReport of PackageUpdates."""
    try:
        raw: dict[str, Any] = json.loads(text)
        reported_key = _unb64(raw["key"])
    except (ValueError, KeyError, TypeError) as error:
        raise ProbeError(f"unreadable report for cycle {key}: {error}") from error
    if reported_key != key:
        raise ProbeError(f"the report in the run directory of {key} is for {reported_key}")
    reboot_pkgs = set(_unb64(raw.get("reboot_packages", "")).split())
    updates = []
    for item in raw.get("updates", []):
        ok = bool(item["ok"])
        name, to = str(item["package"]), str(item["to"])
        updates.append(PackageUpdate(
            package=name,
            title=f"{name} {item['from']} → {to}",
            from_version=str(item["from"]) or None,
            to_version=(str(item.get("now") or "") or to) if ok else to,
            result_code=ResultCode.SUCCEEDED if ok else ResultCode.FAILED,
            hresult=int(item["rc"]) if not ok else 0,
            reboot_required=name in reboot_pkgs,
            output="" if ok else _tail(_unb64(item.get("output", ""))),
        ))
    result = ResultCode(int(raw.get("result_code", 2)))
    return CycleReport(
        key=key,
        state=CycleState.FINISHED,
        started_at=_time(raw["started_at"]) or datetime.now(UTC),
        finished_at=_time(raw.get("finished_at", "")),
        updates=tuple(updates),
        result_code=result,
        hresult=int(raw.get("refresh_rc", 0)) if result is not ResultCode.SUCCEEDED else 0,
        reboot_required=bool(raw.get("reboot_required", False)),
        excluded=tuple(_unb64(raw.get("excluded", "")).split()),
    )


def refresh_output(text: str) -> str:
    """The refresh step's output from a report (for logs when the refresh failed)."""
    try:
        return _tail(_unb64(json.loads(text.partition("\n")[2]).get("refresh_output", "")))
    except (ValueError, AttributeError):
        return ""


def _unb64(value: str) -> str:
    try:
        return base64.b64decode(value or "", validate=False).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return ""


def _tail(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    return text if len(text) <= MAX_OUTPUT else "…" + text[-MAX_OUTPUT:]


def _time(value: str) -> datetime | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
