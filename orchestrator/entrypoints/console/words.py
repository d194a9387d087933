"""Result codes and HRESULTs in words, for people reading a patch record (what `patch_end_message` carries as
numbers). WUA's OperationResultCode, and the HRESULTs Windows Update reports most often on 2012 / 2012 R2
(Microsoft's "Windows Update error codes" list and winerror.h)."""

from __future__ import annotations

RESULT_CODES = {
    0: "not started",
    1: "in progress",
    2: "succeeded",
    3: "succeeded with errors",
    4: "failed",
    5: "aborted",
}

HRESULTS = {
    0x00000000: "S_OK: no error",
    0x00240005: "WU_S_REBOOT_REQUIRED: the system must be restarted to complete installation",
    0x80070002: "ERROR_FILE_NOT_FOUND: the system cannot find the file specified",
    0x80070005: "E_ACCESSDENIED: access is denied",
    0x8007000E: "E_OUTOFMEMORY: not enough memory",
    0x80070020: "ERROR_SHARING_VIOLATION: a file is in use by another process",
    0x80070070: "ERROR_DISK_FULL: there is not enough space on the disk",
    0x800705B4: "ERROR_TIMEOUT: the operation timed out",
    0x80070643: "ERROR_INSTALL_FAILURE: fatal error during installation",
    0x80070652: "ERROR_INSTALL_ALREADY_RUNNING: another installation is already in progress",
    0x80072EE2: "ERROR_INTERNET_TIMEOUT: the connection to the update service timed out",
    0x80072EFD: "ERROR_INTERNET_CANNOT_CONNECT: could not connect to the update service",
    0x800F0922: "CBS_E_INSTALLERS_FAILED: the update's installers failed (often a full system reserved partition)",
    0x8024000B: "WU_E_CALL_CANCELLED: the operation was cancelled",
    0x80240016: "WU_E_INSTALL_NOT_ALLOWED: an install or a reboot is pending",
    0x80240017: "WU_E_NOT_APPLICABLE: the update does not apply to this computer",
    0x8024001E: "WU_E_SERVICE_STOP: the Windows Update service stopped",
    0x80240020: "WU_E_NO_INTERACTIVE_USER: the operation needs a logged-on user",
    0x80240022: "WU_E_ALL_UPDATES_FAILED: every update of the operation failed",
    0x80240024: "WU_E_OPERATIONINPROGRESS: another Windows Update operation is in progress",
    0x8024002E: "WU_E_WU_DISABLED: access to the update service is disabled by policy",
    0x80240030: "WU_E_INVALID_PROXY_SERVER: the proxy server is not valid",
    0x8024402C: "WU_E_PT_WINHTTP_NAME_NOT_RESOLVED: the update server's name could not be resolved",
    0x80244022: "WU_E_PT_HTTP_STATUS_SERVICE_UNAVAIL: the update server answered 503",
    0x80246007: "WU_E_DM_NOTDOWNLOADED: the update was not downloaded",
    0x80246008: "WU_E_DM_FAILTOCONNECTTOBITS: could not connect to BITS",
    0x8024A105: "WU_E_AU_NO_REGISTERED_SERVICE: no update service is registered",
    0x80242016: "WU_E_UH_POSTREBOOTUNEXPECTEDSTATE: the update was in an unexpected state after the reboot",
    0x80242006: "WU_E_UH_INVALIDMETADATA: the update's metadata is not valid",
    0x8024200D: "WU_E_UH_NEEDANOTHERDOWNLOAD: the update needs another download",
}


def result_code_words(code: int | None) -> str:
    if code is None:
        return ""
    return RESULT_CODES.get(int(code), f"result code {code}")


def hresult_words(hresult: str | int | None) -> str:
    """An HRESULT ("0x80070643" or an integer, signed or not) in words; unknown ones say so with the code."""
    if hresult is None or hresult == "":
        return ""
    try:
        value = int(hresult, 16) if isinstance(hresult, str) else int(hresult)
    except ValueError:
        return str(hresult)
    value &= 0xFFFFFFFF
    known = HRESULTS.get(value)
    if known is not None:
        return known
    if value & 0x80000000 == 0:
        return f"0x{value:08X}: success"
    facility = (value >> 16) & 0x1FFF
    where = {0x24: "a Windows Update error", 0x7: "a Win32 error", 0xF: "a servicing (CBS) error"}.get(
        facility, "an error")
    return f"0x{value:08X}: {where} without a description here (search it on Microsoft's support site)"


def kb_url(kb: str) -> str | None:
    """The support page of a KB (https://support.microsoft.com/help/<number>); None for anything else (a Linux
    package's name)."""
    text = kb.strip().upper()
    if text.startswith("KB") and text[2:].isdigit():
        return f"https://support.microsoft.com/help/{text[2:]}"
    return None
