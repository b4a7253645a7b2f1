"""`changegate keygen`: a personal signing key (0600) and the trust-store entry to add."""

from __future__ import annotations

import os
from pathlib import Path

import click

from changegate.core.dsse import generate
from changegate.core.errors import ChangeGateError
from changegate.core.trust import trust_entry_yaml

DEFAULT_KEY = Path("~/.config/changegate/signing.key")


@click.command()
@click.option("--name", required=True, help="Your Kubernetes username (see `changegate whoami`).")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=str(DEFAULT_KEY),
              show_default=True, help="Where to write the private key (mode 0600).")
@click.option("--type", "algorithm", type=click.Choice(["ed25519", "ecdsa-p256"]),
              default="ed25519", show_default=True)
@click.option("--namespace", "namespaces", multiple=True,
              help="Namespaces you approve for (repeatable; default all: *).")
@click.option("--passphrase-env", metavar="VAR",
              help="Encrypt the key with the passphrase in this environment variable.")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
def keygen(name: str, out: str, algorithm: str, namespaces: tuple[str, ...],
           passphrase_env: str | None, force: bool) -> None:
    """Make a signing key and print the trust-store entry for a policy admin to add."""
    path = Path(out).expanduser()
    if path.exists() and not force:
        raise ChangeGateError(f"{path} exists; pass --force to replace it (the old key is lost)")
    passphrase = None
    if passphrase_env:
        value = os.environ.get(passphrase_env)
        if not value:
            raise ChangeGateError(f"environment variable {passphrase_env} is empty or unset")
        passphrase = value.encode()
    key = generate(algorithm)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Create with 0600 from the start: never a moment where others can read the key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.pem(passphrase))
    path.chmod(0o600)
    click.echo(f"# private key written to {path} (mode 0600); keyid {key.public.keyid}", err=True)
    click.echo("# add this entry to the trust store (approvers.yaml):", err=True)
    click.echo(trust_entry_yaml(name, key.public.pem(), list(namespaces) or None), nl=False)
