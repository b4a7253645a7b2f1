"""The `changegate` command (also `kubectl changegate`). Commands load lazily: `--help` and
`check` stay fast, and a command's heavy imports (kopf, kubernetes) load only when used.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click
from click.shell_completion import CompletionItem

from changegate import __version__
from changegate.core.errors import ChangeGateError

# name -> (module, attribute, one-line help). One module per command group.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "keygen": ("changegate.cli.keys", "keygen", "Make a signing key and print its trust entry."),
    "verify": ("changegate.cli.check", "verify", "Explain each signature of a ChangeApproval."),
    "check": ("changegate.cli.check", "check", "The webhook's decision, offline, on files."),
    "serve": ("changegate.cli.serve", "serve", "Run the admission webhook."),
    "operator": ("changegate.cli.operator", "operator", "Run the ChangeApproval operator."),
    "request": ("changegate.cli.workflow", "request", "Request approval for a change."),
    "approve": ("changegate.cli.workflow", "approve", "Review and sign a ChangeApproval."),
    "apply": ("changegate.cli.workflow", "apply_", "Apply an approved manifest as signed."),
    "preflight": ("changegate.cli.workflow", "preflight", "Exit 1 unless every change would "
                  "be admitted now."),
    "list": ("changegate.cli.workflow", "list_", "List ChangeApprovals."),
    "status": ("changegate.cli.workflow", "status", "Explain what a ChangeApproval still needs."),
    "audit": ("changegate.cli.audit", "audit", "The record of a period's tier-1 changes."),
    "whoami": ("changegate.cli.admin", "whoami", "The username the API server sees."),
    "break-glass": ("changegate.cli.admin", "break_glass", "The on-call path, loud and recorded."),
    "canary": ("changegate.cli.canary", "canary", "Canary runs (abort)."),
    "onboard": ("changegate.cli.admin", "onboard", "Label a namespace tier-1 with a mode."),
    "emergency-off": ("changegate.cli.admin", "emergency_off", "Set gated entries to Ignore."),
    "emergency-on": ("changegate.cli.admin", "emergency_on", "Set gated entries back to Fail."),
    "demo": ("changegate.cli.demo", "demo", "The whole story on an embedded default, no cluster."),
    "completion": ("changegate.cli.completion", "completion",
                   "Print the shell completion script (bash, zsh, fish)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attr, _short = entry
        # Every entry names a module of this package (a test imports each): a missing one
        # is a broken install, and the ImportError says so; no command is a placeholder.
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command), cmd_name
        return command

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        # Command names and their help from the table: a <TAB> imports no command module.
        names = [CompletionItem(name, help=COMMANDS[name][2])
                 for name in self.list_commands(ctx) if name.startswith(incomplete)]
        return names + click.Command.shell_complete(self, ctx, incomplete)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text without importing every module.
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="changegate")
def cli() -> None:
    """changegate: two signed approvals for every tier-1 change."""


def main(argv: list[str] | None = None) -> Any:
    """Entry point: errors are one clear line and a non-zero exit, never a traceback."""
    try:
        return cli.main(args=argv, prog_name="changegate", standalone_mode=True)
    except ChangeGateError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
