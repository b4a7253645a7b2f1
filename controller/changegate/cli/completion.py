"""Shell completion: `changegate completion bash|zsh|fish` prints click's script, and
`kubectl_complete-changegate` answers `kubectl changegate <TAB>`.

Both use click's own completion machinery, so the completions are the commands' real
options and arguments. kubectl (1.26 and later) completes a plugin `kubectl-NAME` by
running `kubectl_complete-NAME ARGS... INCOMPLETE` and reading Cobra's `__complete`
answer: one completion per line (a tab, then its description), and a last line
`:DIRECTIVE`.
"""

from __future__ import annotations

import sys

import click
from click.shell_completion import ShellComplete, get_completion_class

PROG = "changegate"
COMPLETE_VAR = "_CHANGEGATE_COMPLETE"
SHELLS = ("bash", "zsh", "fish")

# Cobra's ShellCompDirective values (kubectl reads them from the last line).
DEFAULT = 0  # the shell may also complete file names
NO_FILE = 4  # only the completions given
DIRS_ONLY = 16

def _root(ctx: click.Context) -> click.Command:
    return ctx.find_root().command


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash: source <(changegate completion bash)
    zsh:  source <(changegate completion zsh)
    fish: changegate completion fish | source
    To keep it, write it where the shell loads completions, e.g.
      changegate completion bash > ~/.local/share/bash-completion/completions/changegate
    For `kubectl changegate <TAB>`, kubectl 1.26+ runs `kubectl_complete-changegate`,
    installed next to `kubectl-changegate`; load kubectl's own completion
    (`source <(kubectl completion bash)`) and nothing else is needed.
    """
    cls = get_completion_class(shell)
    if cls is None:  # click knows all three; a newer click dropping one should say so
        raise click.ClickException(f"click has no completion for {shell}")
    click.echo(cls(_root(ctx), {}, PROG, COMPLETE_VAR).source(), nl=False)


def cobra_answer(args: list[str]) -> str:
    """Cobra's `__complete` answer for `changegate ARGS`, the last arg being the word being
    completed (kubectl passes an empty one after a space)."""
    from changegate.cli.main import cli

    *complete, incomplete = args or [""]
    items = ShellComplete(cli, {}, PROG, COMPLETE_VAR).get_completions(complete, incomplete)
    lines, directive = [], NO_FILE
    for item in items:
        if item.type == "file":
            directive = DEFAULT
        elif item.type == "dir":
            directive = DIRS_ONLY
        else:
            help_text = " ".join((item.help or "").split())
            lines.append(f"{item.value}\t{help_text}" if help_text else str(item.value))
    return "".join(f"{line}\n" for line in lines) + f":{directive}\n"


def kubectl_complete() -> None:
    """Entry point of `kubectl_complete-changegate`."""
    sys.stdout.write(cobra_answer(sys.argv[1:]))
