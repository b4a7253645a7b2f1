"""What every workflow command shares: kubeconfig flags, the session, the signing key."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from changegate.core.dsse import PrivateKey, is_encrypted, load_private_key
from changegate.core.errors import ChangeGateError, KeyFileError
from changegate.kube import Kube, connect, default_namespace
from changegate.workflow.site import DEFAULT_CONTROLLER_NAMESPACE, Site, load_site

PASSPHRASE_ENV = "CHANGEGATE_KEY_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
F = TypeVar("F", bound=Callable[..., Any])


class Session:
    """The API server and namespace a command works on, connected on first use (so an
    offline path such as `approve -f` never needs a kubeconfig)."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None,
                 controller_namespace: str) -> None:
        self._kubeconfig, self._context = kubeconfig, context
        self.explicit_namespace = namespace is not None
        self._namespace = namespace
        self.controller_namespace = controller_namespace
        self._api: Kube | None = None
        self._site: Site | None = None

    @property
    def api(self) -> Kube:
        if self._api is None:
            self._api = connect(self._kubeconfig, self._context)
        return self._api

    @property
    def namespace(self) -> str:
        if self._namespace is None:
            self._namespace = default_namespace(self._kubeconfig, self._context)
        return self._namespace

    @property
    def site(self) -> Site:
        if self._site is None:
            self._site = load_site(self.api, self.controller_namespace)
            for note in self._site.notes:
                click.echo(f"note: {note}", err=True)
        return self._site


def kube_options(func: F) -> F:
    """--kubeconfig, --context, -n/--namespace like kubectl; the result arrives as `session`."""

    @click.option("--kubeconfig", type=click.Path(dir_okay=False),
                  help="Path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config).")
    @click.option("--context", "kube_context", help="The kubeconfig context to use.")
    @click.option("-n", "--namespace", help="Namespace (default: the context's namespace).")
    @click.option("--controller-namespace", envvar="CHANGEGATE_NAMESPACE",
                  default=DEFAULT_CONTROLLER_NAMESPACE, show_default=True,
                  help="Where changegate's ConfigMaps live ($CHANGEGATE_NAMESPACE).")
    @functools.wraps(func)
    def wrapper(*args: Any, kubeconfig: str | None, kube_context: str | None,
                namespace: str | None, controller_namespace: str, **kwargs: Any) -> Any:
        session = Session(kubeconfig, kube_context, namespace, controller_namespace)
        return func(*args, session=session, **kwargs)

    return wrapper  # type: ignore[return-value]


def load_signing_key(path: str) -> PrivateKey:
    """PEM (Ed25519, P-256) or OpenSSH ed25519; asks for the passphrase when encrypted."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ChangeGateError(f"{path}: no such key file") from exc
    except OSError as exc:
        raise ChangeGateError(f"{path}: cannot read the key ({exc.strerror})") from exc
    passphrase: bytes | None = None
    if is_encrypted(data):
        env = os.environ.get(PASSPHRASE_ENV)
        if env is not None:
            passphrase = env.encode()
        elif sys.stdin.isatty():
            passphrase = click.prompt(f"Passphrase for {path}", hide_input=True,
                                      err=True).encode()
        else:
            raise ChangeGateError(f"{path} is encrypted: set {PASSPHRASE_ENV} or run on a "
                                  "terminal to be asked")
    try:
        return load_private_key(data, passphrase)
    except KeyFileError as exc:
        raise ChangeGateError(f"{path}: {exc}") from exc


def color_enabled() -> bool:
    """Colour on a terminal only; NO_COLOR (no-color.org) turns it off there too."""
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ
