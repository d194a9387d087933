"""The simulated fleet: `patchaas demo` (end to end on the embedded default), `patchaas sim init` (a shared
simulated fleet for a deployment) and `patchaas simulator` (a CLC API v2 subset over it, with faults).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.domain import naming
from orchestrator.entrypoints.cli.common import console, err, fail
from orchestrator.settings import Settings

sim_app = typer.Typer(help="The simulated fleet (for demos, tests and benchmarks).", no_args_is_help=True)


def demo(workdir: Annotated[Path, typer.Option(help="where the demo's SQLite file goes")] = Path("var"),
         timeout: Annotated[float, typer.Option(help="seconds to wait for the fleet")] = 90.0,
         transport: Annotated[str | None, typer.Option(
             help="inprocess | http: the fleet over HTTP (simulator + clc driver + report channel) "
                  "(default PATCHAAS_DEMO_TRANSPORT, inprocess)")] = None,
         linux: Annotated[bool, typer.Option("--linux", help="also patch real Linux test hosts (2 Debian, 2 dnf) "
                                             "over SSH, built by scripts/linux-test-hosts (root)")] = False) -> None:
    """Patch a simulated fleet end to end on the embedded default (no PostgreSQL, no Redis)."""
    from orchestrator.entrypoints import demo as demo_mod

    raise typer.Exit(demo_mod.run(workdir, timeout, console, transport, linux=linux))


@sim_app.command("init")
def sim_init(
    count: Annotated[int, typer.Option(help="servers to simulate")] = 20,
    seed: Annotated[int, typer.Option()] = 7,
    alias: Annotated[str, typer.Option()] = "OSD",
    email: Annotated[str, typer.Option()] = "ops@osd.example",
) -> None:
    """Create a simulated fleet in PATCHAAS_SIM_STATE_URL and register it in the inventory."""
    from orchestrator.bootstrap import build_fleet
    from orchestrator.persistence import db, migrate
    from orchestrator.services import inventory
    from simulation import fleet as simulated
    from simulation.specs import build_fleet_specs
    from simulation.store import SqlStore

    settings = Settings()
    if not settings.sim_state_url:
        raise fail("set PATCHAAS_SIM_STATE_URL to the database the simulated fleet lives in", 2)
    try:
        alias = naming.check_alias(alias)
    except naming.NamingError as exc:
        raise fail(str(exc), 2) from None
    specs = build_fleet_specs(seed, count, alias=alias)
    simulated.SimulatedFleet.create(specs, SqlStore(settings.sim_state_url),
                                    simulated.SimTimings.instant(), seed=seed, reset=True)
    build_fleet(settings)  # attaches: proves the settings are usable by workers
    migrate.upgrade(settings.database_url)
    sql = db.create_engine_for(settings.database_url)
    with db.session_factory(sql).begin() as session:
        now = db.utcnow()
        inventory.ensure_account(session, alias, f"{alias} account", "VA1", email, now)
        gid = inventory.ensure_group(session, alias, "va1-0001", f"{alias} servers")
        added = inventory.register_servers(
            session, alias, (inventory.ServerSpec(s.name, s.os_type, s.power_state.value, gid) for s in specs)
        )
    sql.dispose()
    console.print(f"simulated fleet of {count} servers (seed {seed}); {added} registered in group {gid}")


def simulator(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8777,
    seed: Annotated[int, typer.Option(help="seeds the fleet it creates and the fault rolls")] = 7,
    servers: Annotated[
        int | None,
        typer.Option(help="create a new fleet of N servers (replacing a shared one); default: attach to "
                          "PATCHAAS_SIM_STATE_URL's fleet, or 20 servers in memory"),
    ] = None,
    alias: Annotated[str, typer.Option(help="account alias of the fleet and of the user")] = "OSD",
    username: Annotated[str | None, typer.Option(help="login user (default: PATCHAAS_CLC_USERNAME, patchaas)")] = None,
    password: Annotated[str | None, typer.Option(help="password (default: PATCHAAS_CLC_PASSWORD, patchaas)")] = None,
    timings: Annotated[str | None, typer.Option(help="instant | demo (default PATCHAAS_SIM_TIMINGS)")] = None,
    fault_5xx_rate: Annotated[float, typer.Option(help="share of requests answered 500/502/503")] = 0.0,
    latency_ms: Annotated[float, typer.Option(help="added to every CLC request")] = 0.0,
    drop_rate: Annotated[float, typer.Option(help="share of connections closed without an answer")] = 0.0,
    token_ttl: Annotated[float, typer.Option(help="seconds a bearer token lives (CLC: 2 weeks)")] = 14 * 24 * 3600.0,
    after_effect_share: Annotated[float, typer.Option(help="share of 5xx/drops that strike after the effect")] = 0.5,
    report_drop_rate: Annotated[float, typer.Option(help="share of cycle reports servers never post")] = 0.0,
    report_duplicate_rate: Annotated[float, typer.Option(help="share of cycle reports posted twice")] = 0.0,
    hide_package_results: Annotated[
        bool, typer.Option(help="packageRuns never says a run finished: results only via the report channel")
    ] = False,
    rate_limit: Annotated[
        float, typer.Option(help="requests/s per account; beyond it 429 with Retry-After (0: no limit)")
    ] = 0.0,
    rate_limit_burst: Annotated[
        float | None, typer.Option(help="the rate limit's bucket size (default: one second's worth)")
    ] = None,
    log_level: Annotated[str, typer.Option()] = "warning",
) -> None:
    """Serve a CLC API v2 subset over the simulated fleet, with fault injection (see docs/CLC_SIMULATOR.md)."""
    from simulation import clc_app, clc_control_plane, clc_faults, clc_server
    from workers.fleet import factory

    settings = Settings()
    try:
        alias = naming.check_alias(alias)
        faults = clc_faults.Faults(error_rate=fault_5xx_rate, latency_ms=latency_ms, drop_rate=drop_rate,
                                   token_ttl_seconds=token_ttl, after_effect_share=after_effect_share, seed=seed,
                                   report_drop_rate=report_drop_rate, report_duplicate_rate=report_duplicate_rate,
                                   hide_package_results=hide_package_results, rate_limit=rate_limit,
                                   rate_limit_burst=rate_limit_burst)
        sim_timings = factory.timings_for(settings.model_copy(update={"sim_timings": timings or settings.sim_timings}))
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    fleet = clc_server.fleet_for(settings.sim_state_url, seed, servers, alias, sim_timings)
    user = username or settings.clc_username or "patchaas"
    secret = password or (settings.clc_password.get_secret_value() if settings.clc_password else "patchaas")
    users = clc_control_plane.users_from({user: secret}, alias)
    where = settings.sim_state_url or "memory"
    err.print(f"CLC simulator on http://{host}:{port}: {len(fleet.specs())} servers ({where}), user {user}, "
              f"5xx {fault_5xx_rate:g}, latency {latency_ms:g} ms, drops {drop_rate:g}, token ttl {token_ttl:g}s, "
              f"rate limit {f'{rate_limit:g}/s per account' if rate_limit else 'off'}")
    clc_server.serve(clc_app.create_app(fleet, users, faults), host, port, log_level)
