"""Before a card is written: the image (and the bmap that says which blocks to write) are the ones the
build listed in a SHA256SUMS it signed.

The key is the public half of the build's output.sign_key (`--verify-key`, or KEY.pub beside the recipe's
key). Nothing is opened for writing until the signature and every digest have been checked.
"""

from __future__ import annotations

from pathlib import Path

from imagebuilder.core.errors import ImageBuilderError
from imagebuilder.core.log import log, step
from imagebuilder.outputs.signing import SUMS, verify_checksums
from imagebuilder.recipe.load import load_recipe
from imagebuilder.sources.checksums import parse_listing, sha256_of


class NotSigned(ImageBuilderError):
    """An image the signed listing does not vouch for."""


def trusted_key(verify_key: Path | None, recipe: Path | None) -> Path | None:
    """The public key a flash checks the image against: --verify-key, else the public half of the recipe's
    output.sign_key; None when neither says one."""
    if verify_key is not None:
        return verify_key
    key = load_recipe(recipe).sign_key_path() if recipe is not None else None
    if key is None:
        return None
    public = key.with_name(key.name + ".pub")
    if not public.is_file():
        raise NotSigned(f"{recipe}: output.sign_key: no {public} to check the images' signature with",
                        f"make it with `ssh-keygen -y -f {key} > {public}`, or give --verify-key PUBLIC_KEY")
    return public


def check_signed(image: Path, bmap: Path | None, public_key: Path) -> None:
    """Raise unless SHA256SUMS beside the image is signed by public_key and lists the image and the bmap
    with the digests they have."""
    folder = image.parent
    verify_checksums(folder, public_key)
    listed = parse_listing((folder / SUMS).read_text())
    for path in (image, bmap) if bmap is not None else (image,):
        expected = listed.get(path.name)
        if expected is None:
            raise NotSigned(f"{path}: not listed in the signed {SUMS}",
                            "a per-node image is listed by its bmap only: flash worker.img with --hostname NAME "
                            "instead" if path.suffix == ".img" else "flash a file the build wrote")
        with step(f"check {path.name} against the signed {SUMS}"):
            if sha256_of(path) != expected:
                raise NotSigned(f"{path}: its sha256 is not the one the signed {SUMS} lists",
                                "the file was changed after the build signed it: build it again or copy it anew")
    log.info("%s: signed by %s", image.name, public_key)
