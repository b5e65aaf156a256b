"""`raftq alert add|list|remove`: alert rules kept in the cluster (docs/alerting.md).

The condition and the target are checked here first (bad input: one line,
exit 2, nothing sent) with the same code the node runs before it records a
rule (cluster/alert_rules.py, cluster/alert_delivery.py).

The commands are built by `alert_commands()`, which cli/main.py calls to
register them: they use cli.main's shared options, so building them at import
would make the two modules import each other (`python -m cli.main` loads
cli.main twice, once as __main__).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from cli import output
from cli.output import InputError

if TYPE_CHECKING:
    from cluster.client import Client


def alert_commands() -> click.Group:
    """The `alert` group and its commands."""
    from cli.main import RaftqGroup, client_options, with_client

    @click.group(name="alert", cls=RaftqGroup)
    def alert_group() -> None:
        """Alert rules evaluated by the cluster's leader (webhook or email)."""

    @alert_group.command(name="add")
    @click.argument("name")
    @click.option("--when", "when", required=True, metavar="COND",
                  help="The condition, e.g. 'depth(emails) > 100' or 'no_worker(emails)' (docs/alerting.md).")
    @click.option("--for", "hold", default=None, metavar="DURATION",
                  help="Fire only once COND has held this long, e.g. 30s or 5m [default: at once].")
    @click.option("--webhook", default=None, metavar="URL", help="POST a JSON notification to this http(s) URL.")
    @click.option("--email", default=None, metavar="ADDRESS", help="Mail the notification (SMTP of [alerting]).")
    @client_options
    @with_client
    def alert_add(client: Client, name: str, when: str, hold: str | None, webhook: str | None, email: str | None,
                  as_json: bool) -> None:
        """Add alert NAME: notify when COND becomes true, and again when it resolves."""
        from cluster.alert_delivery import check_target  # urllib and smtplib: only when adding
        from cluster.alert_rules import parse, parse_duration_ms
        from cluster.errors import BadRequest

        try:
            parse(when)
            check_target(webhook, email)
            for_ms = 0 if hold is None else parse_duration_ms(hold, "--for")
        except BadRequest as exc:
            raise InputError(exc.message) from None
        result = client.alert_add(name, when, webhook=webhook, email=email, for_ms=for_ms)
        if as_json:
            output.emit_json(result)
            return
        click.echo(f"alert {name} {'added' if result.get('created') else 'unchanged (exists)'}")

    @alert_group.command(name="list")
    @client_options
    @with_client
    def alert_list(client: Client, as_json: bool) -> None:
        """Every alert rule: its condition, target and whether it is firing."""
        alerts = client.alerts()
        if as_json:
            output.emit_json(alerts)
            return

        def state(a: dict[str, Any]) -> str:
            return ("FIRING" if a.get("firing") else "ok") + f" since {output.format_time(a.get('since_ms', 0) / 1000)}"

        output.emit_table(
            ["NAME", "WHEN", "FOR", "TARGET", "STATE", "UNDELIVERED"],
            [[a.get("name"), a.get("when"), output.format_duration((a.get("for_ms") or 0) / 1000),
              a.get("webhook") or a.get("email"), state(a), str(a.get("undelivered", 0))] for a in alerts],
        )

    @alert_group.command(name="remove")
    @click.argument("name")
    @client_options
    @with_client
    def alert_remove(client: Client, name: str, as_json: bool) -> None:
        """Delete alert NAME (its undelivered notifications are dropped)."""
        result = client.alert_remove(name)
        if as_json:
            output.emit_json(result)
        else:
            click.echo(f"alert {name} removed")

    return alert_group
