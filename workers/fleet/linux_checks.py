"""What the ssh driver asks a Linux host besides its update cycles (issue 14): whether it has settled after a
reboot (`systemctl is-system-running`), in commands it sends and parsers of their answers. Pure: no SSH here."""

from __future__ import annotations

from schemas.fleet import SettleStatus

BOOT_ID = "/proc/sys/kernel/random/boot_id"
BUSY_STATES = frozenset({"initializing", "starting", "maintenance", "stopping"})
"""`systemctl is-system-running` answers that mean the system is not done booting (or is going down)."""
SETTLE_COMMAND = (
    f"cat {BOOT_ID}; if command -v systemctl >/dev/null 2>&1; then "
    "s=$(systemctl is-system-running 2>/dev/null); echo \"systemd:${s:-none}\"; else echo systemd:absent; fi"
)


def parse_settle(text: str, accept_degraded: bool) -> SettleStatus:
    """The answer of SETTLE_COMMAND: the boot id, then `systemd:<state>`. `running` is idle; `degraded` (a unit
    failed) is idle only when the driver accepts it (PATCHAAS_SSH_SETTLE_DEGRADED); starting states are busy. A
    host whose init is not systemd (`offline`, `unknown`, no answer, no systemctl) cannot say: idle once up."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 2 or not lines[1].startswith("systemd:"):
        raise ValueError(f"unexpected settle answer {text[:200]!r}")
    boot_id, state = lines[0], lines[1].removeprefix("systemd:")
    if state == "running":
        return SettleStatus(up=True, boot_id=boot_id, idle=True, detail="systemd: running")
    if state == "degraded":
        detail = "systemd: degraded (a unit failed; `systemctl --failed` lists it)"
        return SettleStatus(up=True, boot_id=boot_id, idle=accept_degraded,
                            detail=detail + ("" if accept_degraded else ", not accepted"))
    if state in BUSY_STATES:
        return SettleStatus(up=True, boot_id=boot_id, idle=False, detail=f"systemd: {state}")
    return SettleStatus(up=True, boot_id=boot_id, idle=True,
                        detail=f"systemd not the host's init ({state}): the boot id only")
