"""An SBOM per image: CycloneDX JSON, made, written and validated with cyclonedx-python-lib.

It lists what the image holds: the distribution (its os-release), every installed Debian package (version,
architecture, source package, the licenses its machine-readable copyright file states, a purl), the k3s
binary and air-gap images when the image has them, and every file the build's overlay layers wrote, each
with its sha256. The image itself is the SBOM's subject (`metadata.component`), named by its sha256, so a
card's bytes can be checked against it.

What the packages are was read when the image's stage was made (sources/inventory.py); the files come
from the layers the build wrote (their bytes are in memory): nothing here opens the image.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imagebuilder import __version__
from imagebuilder.layers.render import OverlayFile, RenderedLayer
from imagebuilder.sources.inventory import Inventory, Package
from imagebuilder.sources.k3s_assets import IMAGES_DIR

if TYPE_CHECKING:
    from cyclonedx.model.component import Component

# 1.6: the newest version the usual consumers (Dependency-Track, Trivy, Grype) read.
SCHEMA = "1.6"
SUFFIX = ".cdx.json"  # CycloneDX's recommended suffix for JSON documents
PROPERTY = "imagebuilder"  # the namespace of our own component properties
K3S_BINARY = "/usr/local/bin/k3s"


@dataclass(frozen=True)
class ImageContents:
    """What an image holds beside its own bytes: read when its stage was made, and the layers written."""

    inventory: Inventory
    layers: tuple[RenderedLayer, ...]  # in the order they were written: a later file replaces an earlier one
    boot_mount: str
    k3s_layer: str | None = None  # the name of the layer holding the k3s release assets (sources/k3s_assets.py)


@dataclass(frozen=True)
class ImageFile:
    name: str  # master.img
    sha256: str
    size: int


def sbom_name(role: str) -> str:
    return f"{role}{SUFFIX}"


def render_sbom(contents: ImageContents, image: ImageFile, *, cluster: str, role: str, base: str,
                k3s_version: str) -> str:
    """The SBOM of one image, as CycloneDX JSON."""
    # Imported here: the library takes a noticeable part of a second to load, which only a build that
    # writes an SBOM should pay.
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6

    subject = Component(
        type=ComponentType.OPERATING_SYSTEM, name=f"{cluster}-{role}", bom_ref=f"image:{image.name}",
        description=f"{image.name} of cluster {cluster}, built by imagebuilder from {base}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=image.sha256)],
        properties=[Property(name=f"{PROPERTY}:file", value=image.name),
                    Property(name=f"{PROPERTY}:size", value=str(image.size))])
    # The same image gets the same serial number.
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"imagebuilder:{image.name}:{image.sha256}"))
    bom.metadata.component = subject
    bom.metadata.timestamp = timestamp()
    bom.metadata.tools.components.add(Component(type=ComponentType.APPLICATION, name="imagebuilder",
                                                version=__version__))
    os_release = contents.inventory.os_release
    components = [*distribution(os_release), *(package(p, os_release) for p in contents.inventory.packages),
                  *added(contents, k3s_version)]
    for component in components:
        bom.components.add(component)
    bom.register_dependency(subject, components)
    return str(JsonV1Dot6(bom).output_as_string(indent=1)) + "\n"


def validate_sbom(text: str) -> None:
    """Check an SBOM against the CycloneDX schema with the library's own validator; an invalid one is a bug."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.from_version(SCHEMA)).validate_str(text)
    if error is not None:
        raise ValueError(f"the SBOM does not validate against CycloneDX {SCHEMA}: {error}")


def timestamp() -> datetime.datetime:
    """SOURCE_DATE_EPOCH when it is set (a build meant to be repeated byte for byte), else now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch.isdigit():
        return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def distribution(os_release: dict[str, str]) -> list[Component]:
    from cyclonedx.model.component import Component, ComponentType

    if "ID" not in os_release:
        return []
    return [Component(type=ComponentType.OPERATING_SYSTEM, name=os_release["ID"], bom_ref="os",
                      version=os_release.get("VERSION_ID") or os_release.get("VERSION_CODENAME"),
                      description=os_release.get("PRETTY_NAME"))]


def package(p: Package, os_release: dict[str, str]) -> Component:
    """A Debian package, with a purl in the form of the purl spec's deb type: the vendor is the
    distribution the image's os-release names (debian, ubuntu, raspbian)."""
    from cyclonedx.model.component import Component, ComponentType, Pedigree
    from cyclonedx.model.license import DisjunctiveLicense, LicenseAcknowledgement
    from cyclonedx.spdx import fixup_id
    from packageurl import PackageURL

    vendor = os_release.get("ID", "debian")
    release = os_release.get("VERSION_ID") or os_release.get("VERSION_CODENAME")
    distro = {"distro": f"{vendor}-{release}"} if release else {}
    purl = PackageURL("deb", vendor, p.name, p.version, {"arch": p.architecture, **distro})
    # The source package as its own purl (arch=source, as the spec has it): security advisories name it.
    source = Component(type=ComponentType.LIBRARY, name=p.source, version=p.source_version,
                       purl=PackageURL("deb", vendor, p.source, p.source_version, {"arch": "source", **distro}))
    # A short name that is an SPDX id becomes that id; Debian's own (GPL-2+, Expat) stay names.
    licenses = [DisjunctiveLicense(id=spdx, acknowledgement=LicenseAcknowledgement.DECLARED)
                if (spdx := fixup_id(name)) else
                DisjunctiveLicense(name=name, acknowledgement=LicenseAcknowledgement.DECLARED)
                for name in p.licenses]
    return Component(type=ComponentType.LIBRARY, name=p.name, version=p.version, bom_ref=purl.to_string(),
                     purl=purl, licenses=licenses, pedigree=Pedigree(ancestors=[source]))


def added(contents: ImageContents, k3s_version: str) -> list[Component]:
    """The files the build's layers wrote (the last writer of each path): k3s's assets as what they are,
    every other one as a file."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL

    final: dict[str, tuple[RenderedLayer, OverlayFile]] = {}
    for layer in contents.layers:
        for f in layer.files:
            final[f.system_path(contents.boot_mount)] = (layer, f)
    components = []
    for path, (layer, f) in sorted(final.items()):
        digest = [] if f.symlink else [HashType(alg=HashAlgorithm.SHA_256, content=hashlib.sha256(f.data).hexdigest())]
        where = [Property(name=f"{PROPERTY}:path", value=path)]
        if layer.name == contents.k3s_layer and path == K3S_BINARY:
            components.append(Component(
                type=ComponentType.APPLICATION, name="k3s", version=k3s_version, bom_ref="k3s", hashes=digest,
                purl=PackageURL("github", "k3s-io", "k3s", k3s_version), properties=where))
        elif layer.name == contents.k3s_layer and path.startswith(f"/{IMAGES_DIR}/"):
            components.append(Component(
                type=ComponentType.FILE, name=path.rsplit("/", 1)[1], version=k3s_version, bom_ref=f"file:{path}",
                description="k3s's air-gap images", hashes=digest, properties=where))
        else:
            link = [Property(name=f"{PROPERTY}:symlink", value=f.data.decode(errors="replace"))] if f.symlink else []
            components.append(Component(
                type=ComponentType.FILE, name=path, bom_ref=f"file:{path}", hashes=digest,
                properties=[Property(name=f"{PROPERTY}:layer", value=layer.name), *link]))
    return components
