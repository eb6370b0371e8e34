"""SHA256SUMS signed with an OpenSSH key (`ssh-keygen -Y sign`, namespace `file`), and the signature checked.

OpenSSH keys are what the users of this tool already have (the recipe gives the nodes their public keys), and
ssh-keygen signs and verifies files since OpenSSH 8.1. The signature lists nothing of its own: it vouches for
SHA256SUMS, which lists every output with its digest (the images, their bmaps and SBOMs).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from imagebuilder.core.errors import CommandFailed, ImageBuilderError
from imagebuilder.core.resources import atomic_output, temporary_directory
from imagebuilder.core.run import run
from imagebuilder.recipe.fields import check_ssh_key

SUMS = "SHA256SUMS"
SUMS_SIG = "SHA256SUMS.sig"
NAMESPACE = "file"  # ssh-keygen's namespace for signed files: a signature made for logins or git is refused
PRINCIPAL = "imagebuilder"  # the one name the allowed-signers file made for a check gives the key


class SignatureRefused(ImageBuilderError):
    """A signature that is missing, or not one the given key made of this listing."""


def sign_checksums(out: Path, key: Path, mode: int = 0o600) -> Path:
    """Write out/SHA256SUMS.sig: out/SHA256SUMS signed with the private key `key`.

    A key with a passphrase comes from ssh-agent when it holds it; otherwise ssh-keygen asks for the
    passphrase on the terminal.
    """
    with temporary_directory("sign-") as work:
        # Signed under a name of its own: ssh-keygen writes NAME.sig beside it, and out/ only gets the result.
        copy = work / SUMS
        shutil.copyfile(out / SUMS, copy)
        try:
            run(["ssh-keygen", "-Y", "sign", "-f", key, "-n", NAMESPACE, copy])
        except CommandFailed as e:
            why = e.stderr_tail[-1] if e.stderr_tail else f"exit {e.returncode}"
            raise ImageBuilderError(f"output.sign_key: cannot sign {out / SUMS} with {key}: {why}",
                                    "a key with a passphrase: build on a terminal (ssh-keygen asks for it) or add "
                                    "it to ssh-agent (ssh-add KEY; under sudo, keep SSH_AUTH_SOCK: "
                                    "sudo --preserve-env=SSH_AUTH_SOCK)") from None
        with atomic_output(out / SUMS_SIG, mode) as tmp:
            tmp.write_bytes((work / f"{SUMS}.sig").read_bytes())
    return out / SUMS_SIG


def public_key_line(public_key: Path) -> str:
    """The key's `type base64` from an OpenSSH public key file (as ~/.ssh/id_ed25519.pub)."""
    try:
        lines = [line.strip() for line in public_key.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise SignatureRefused(f"{public_key}: cannot read it: {getattr(e, 'strerror', None) or e}") from None
    if len(lines) != 1 or check_ssh_key(lines[0]) is not None:
        raise SignatureRefused(f"{public_key}: not an OpenSSH public key (one line, e.g. 'ssh-ed25519 AAAA...')",
                               "give the .pub file of the key the build signs with")
    return " ".join(lines[0].split()[:2])


def verify_checksums(folder: Path, public_key: Path) -> None:
    """Check that folder/SHA256SUMS.sig is a good signature of folder/SHA256SUMS by `public_key`; raise
    SignatureRefused when it is missing or is not."""
    sums, sig = folder / SUMS, folder / SUMS_SIG
    for needed in (sums, sig):
        if not needed.is_file():
            raise SignatureRefused(f"{folder}: no {needed.name} to check against {public_key}",
                                   "build with output.sign_key set, and keep SHA256SUMS and SHA256SUMS.sig beside "
                                   "the images")
    key = public_key_line(public_key)
    with temporary_directory("verify-") as work:
        allowed = work / "allowed_signers"
        allowed.write_text(f'{PRINCIPAL} namespaces="{NAMESPACE}" {key}\n')
        result = run(["ssh-keygen", "-Y", "verify", "-f", allowed, "-I", PRINCIPAL, "-n", NAMESPACE, "-s", sig],
                     input=sums.read_bytes(), check=False)
    if result.returncode != 0:
        raise SignatureRefused(f"{sig}: not a good signature of {sums.name} by {public_key}",
                               "SHA256SUMS was changed after it was signed, or another key signed it: refusing to "
                               "trust these images")
