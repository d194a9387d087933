"""Pre/post hooks per account (docs/HOOKS.md), shared by the REST API (`/v2/patchaas/{alias}/hooks`:
orchestrator/entrypoints/rest/hooks.py) and the CLI (`patchaas hook …`: orchestrator/entrypoints/cli/hooks.py).

A hook is named per account and defined by a `schemas.hooks.HookSpec`. PUT creates or replaces it; its secret
headers are sealed (engine/hook_calls.py) and never answered; every change is an audit event (hook.created,
hook.updated, hook.deleted) written in the same transaction. A run uses the hooks as they are at its first step
(engine/hook_runs.py); changing a hook never changes a run already going.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.domain import naming
from orchestrator.engine import event_log, hook_calls, webhook_secrets
from orchestrator.persistence import hook_models, models
from orchestrator.services.errors import Conflict, NotFound, ServiceError
from schemas import hooks as hook_schema

HOOK = hook_models.Hook
RUN = hook_models.HookRun
MAX_HOOKS = 50  # per account


@dataclass(frozen=True)
class HookInfo:
    """A hook as the API and the CLI show it: its definition without secret header values (their names only)."""

    name: str
    definition: dict[str, Any]
    secret_header_names: tuple[str, ...]
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime


@dataclass(frozen=True)
class HookRunInfo:
    """One hook run of an execution (the detail answer's `hooks` list)."""

    name: str
    point: str
    cycle: int
    kind: str
    status: str  # running | ok | failed | unknown
    on_failure: str
    exit_code: int | None
    output: str | None
    attempts: int
    started_at: datetime
    ended_at: datetime | None


def check_name(name: str) -> str:
    if not hook_schema.NAME_RE.match(name):
        raise ServiceError("a hook name has 1 to 63 lower-case letters, digits, - or _, starting with a letter or "
                           "digit")
    return name


def parse_spec(body: dict[str, Any]) -> hook_schema.HookSpec:
    """A hook definition from a JSON body (the CLI's file), or ServiceError naming the problems."""
    try:
        spec = hook_schema.HookSpec.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'hook'}: {e['msg']}" for e in exc.errors())
        raise ServiceError(f"invalid hook: {problems}") from None
    return check_spec(spec)


def check_spec(spec: hook_schema.HookSpec) -> hook_schema.HookSpec:
    """What the schema cannot check: the URL's shape, the body template's syntax, the headers reference."""
    if spec.url is not None:
        parts = urlsplit(spec.url)
        if (parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in spec.url)
                or parts.username or parts.password):
            raise ServiceError("invalid hook: url: an http(s) URL without spaces or user:password@")
    if spec.body is not None:
        try:
            hook_calls.check_template(spec.body)
        except ValueError as exc:
            raise ServiceError(f"invalid hook: body: {exc}") from None
    if spec.headers_ref is not None:
        try:
            webhook_secrets.check_ref(spec.headers_ref)
        except ValueError as exc:
            raise ServiceError(f"invalid hook: headersRef: {str(exc).replace('secretRef', 'headersRef')}") from None
    return spec


class HookService:
    """Put, list, read and delete an account's hooks; the hook runs of an execution."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], datetime], keys: str | None) -> None:
        self.sessions = sessions
        self.clock = clock
        self.keys = keys

    def put(self, alias: str, name: str, spec: hook_schema.HookSpec, by: str) -> tuple[HookInfo, bool]:
        """Create or replace the hook `name`; (the hook, whether it was created)."""
        alias, name, spec = naming.check_alias(alias), check_name(name), check_spec(spec)
        sealed: str | None = None
        if spec.secret_headers:
            try:
                sealed = hook_calls.seal_headers(spec.secret_headers, self.keys)
            except webhook_secrets.SecretUnavailable as exc:
                raise ServiceError(f"invalid hook: secretHeaders: {exc}") from None
        definition = spec.model_dump(mode="json", by_alias=True, exclude={"secret_headers"}, exclude_none=True)
        definition["secretHeaderNames"] = sorted(spec.secret_headers or {})
        now = self.clock()
        try:
            with self.sessions.begin() as session:
                if session.get(models.Account, alias) is None:
                    raise NotFound(f"account {alias} not found")
                row = session.scalar(sa.select(HOOK).where(HOOK.account_alias == alias, HOOK.name == name)
                                     .with_for_update())
                created = row is None
                if row is None:
                    count = session.scalar(sa.select(sa.func.count()).where(HOOK.account_alias == alias)) or 0
                    if count >= MAX_HOOKS:
                        raise ServiceError(f"account {alias} already has {MAX_HOOKS} hooks (the most it may have)")
                    row = HOOK(account_alias=alias, name=name, created_by=by[:200], created_at=now)
                    session.add(row)
                row.definition, row.secret_sealed = definition, sealed
                row.updated_by, row.updated_at = by[:200], now
                session.flush()
                event_log.record(session, alias, "hook.created" if created else "hook.updated", now, actor=by,
                                 payload=_about(row))
                info = _info(row)
        except IntegrityError:
            raise Conflict(f"hook {name} was created meanwhile by another request; try again") from None
        return info, created

    def list_hooks(self, alias: str) -> list[HookInfo]:
        alias = naming.check_alias(alias)
        with self.sessions() as session:
            if session.get(models.Account, alias) is None:
                raise NotFound(f"account {alias} not found")
            return [_info(r) for r in session.scalars(sa.select(HOOK).where(HOOK.account_alias == alias)
                                                      .order_by(HOOK.name))]

    def get(self, alias: str, name: str) -> HookInfo:
        with self.sessions() as session:
            return _info(self._row(session, alias, name))

    def delete(self, alias: str, name: str, by: str) -> HookInfo:
        """Forget the hook (runs already going keep their copy); answers it as it was."""
        with self.sessions.begin() as session:
            row = self._row(session, alias, name, for_update=True)
            info = _info(row)
            event_log.record(session, row.account_alias, "hook.deleted", self.clock(), actor=by, payload=_about(row))
            session.delete(row)
        return info

    def _row(self, session: Session, alias: str, name: str, for_update: bool = False) -> hook_models.Hook:
        alias = naming.check_alias(alias)
        query = sa.select(HOOK).where(HOOK.account_alias == alias, HOOK.name == name)
        row = session.scalar(query.with_for_update() if for_update else query)
        if row is None:
            raise NotFound(f"hook {name} not found")
        return row


def runs_of(session: Session, execution_id: str) -> list[HookRunInfo]:
    """The hook runs of an execution, in the order they started."""
    rows = session.scalars(sa.select(RUN).where(RUN.execution_id == execution_id).order_by(RUN.id)).all()
    return [HookRunInfo(name=r.hook_name, point=r.point, cycle=r.cycle, kind=r.kind, status=r.status,
                        on_failure=r.on_failure, exit_code=r.exit_code, output=r.output, attempts=r.attempts,
                        started_at=r.started_at, ended_at=r.ended_at) for r in rows]


def _about(row: hook_models.Hook) -> dict[str, Any]:
    d = row.definition or {}
    return {"name": row.name, "kind": d.get("kind"), "points": list(d.get("points") or []),
            "onFailure": d.get("onFailure")}


def _info(row: hook_models.Hook) -> HookInfo:
    definition = dict(row.definition or {})
    names = tuple(definition.pop("secretHeaderNames", []) or ())
    return HookInfo(name=row.name, definition=definition, secret_header_names=names, created_by=row.created_by,
                    created_at=row.created_at, updated_by=row.updated_by, updated_at=row.updated_at)
