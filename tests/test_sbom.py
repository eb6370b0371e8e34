"""The SBOM of an image, from a root tree with a real dpkg database and copyright files: what the stage reads
(with the loop backend's own reader and the host's dpkg-query), and the CycloneDX document made of it, checked
with cyclonedx-python-lib's own validator."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from imagebuilder.disk.usage import Usage
from imagebuilder.engine.backends.chroot import Chroot
from imagebuilder.engine.backends.loop import LoopBackend, LoopTree
from imagebuilder.engine.entry import StageRecord, Unusable, usable_record, write_record
from imagebuilder.engine.stages import Stage
from imagebuilder.layers.render import OverlayFile, RenderedLayer
from imagebuilder.outputs.sbom import SCHEMA, ImageContents, ImageFile, render_sbom, validate_sbom
from imagebuilder.recipe.catalogue import LAYOUTS
from imagebuilder.sources.inventory import Inventory, read_inventory, stated_licenses
from tests.conftest import require_programs

STATUS = """\
Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: arm64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u10
Description: GNU C Library: Shared libraries

Package: hello
Status: install ok installed
Maintainer: Santiago Vila <sanvila@debian.org>
Architecture: arm64
Version: 2.10-3
Description: example package based on GNU hello

Package: libgcc-s1
Status: install ok installed
Maintainer: Debian GCC Maintainers <debian-gcc@lists.debian.org>
Architecture: arm64
Source: gcc-12 (12.2.0-14)
Version: 12.2.0-14
Description: GCC support library

Package: tzdata
Status: install ok installed
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: all
Version: 2025b-0+deb12u1
Description: time zone and daylight-saving time data

Package: oldtool
Status: deinstall ok config-files
Maintainer: Nobody <nobody@example.org>
Architecture: arm64
Version: 1.0-1
Description: removed, its configuration kept
"""

DEP5 = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: hello
Source: https://www.gnu.org/software/hello/

Files: *
Copyright: 1992-2022 Free Software Foundation, Inc.
License: GPL-3+

Files: debian/*
Copyright: 1997-2022 Santiago Vila
License: GPL-3+

Files: lib/*
Copyright: Free Software Foundation, Inc.
License: LGPL-2.1+ or GPL-2+
 (an expression, kept as written)

License: GPL-3+
 This program is free software; you can redistribute it and/or modify
 it under the terms of the GNU General Public License as published by
 .
 the Free Software Foundation; either version 3, or (at your option)
"""

GCC = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
License: GPL-3+ with GCC-exception-3.1

Files: *
Copyright: Free Software Foundation
License: MIT
"""

FREE_FORM = """\
This is the Debian prepackaged version of the GNU C Library.

* Most of the GNU C library is under the following copyright:
    License: this line is prose, not a field
"""

OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n' \
             'VERSION_CODENAME=bookworm\nID=debian\n'


def root_tree(root: Path, outside: Path) -> Path:
    """A root tree as a stage sees it: a dpkg database, copyright files (one reached through a doc folder
    that is a link, one through an absolute link), an os-release reached through a link."""
    (root / "var/lib/dpkg/updates").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    doc = root / "usr/share/doc"
    for name, text in (("hello", DEP5), ("libc6", FREE_FORM), ("gcc-12-base", GCC)):
        (doc / name).mkdir(parents=True)
        (doc / name / "copyright").write_text(text)
    (doc / "libgcc-s1").symlink_to("gcc-12-base")  # as Debian links a package's docs to its base package's
    # tzdata's copyright is an absolute link: it must be read inside the tree, never the host's file.
    (doc / "tzdata").mkdir()
    (doc / "tzdata/copyright").symlink_to("/usr/share/doc/hello/copyright")
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "copyright").write_text("Format: copyright-format/1.0\n\nFiles: *\nLicense: HOST-FILE\n")
    (root / "usr/lib").mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/os-release").write_text(OS_RELEASE)
    (root / "etc").mkdir()
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    return root


def loop_tree(root: Path) -> LoopTree:
    # The loop backend's tree over the folder: only its dpkg-query and its reader run here, no chroot.
    return LoopTree(root, Chroot(root), LAYOUTS["raspios"])


def test_the_inventory_is_the_dpkg_database_with_the_licenses_stated(tmp_path: Path) -> None:
    require_programs("dpkg-query")
    tree = loop_tree(root_tree(tmp_path / "root", tmp_path / "host"))
    inventory = read_inventory(tree.list_packages(), tree.read_file)
    by_name = {p.name: p for p in inventory.packages}
    assert sorted(by_name) == ["hello", "libc6", "libgcc-s1", "tzdata"]  # oldtool is removed: not listed
    assert (by_name["libc6"].source, by_name["libc6"].source_version) == ("glibc", "2.36-9+deb12u10")
    assert (by_name["libgcc-s1"].source, by_name["libgcc-s1"].source_version) == ("gcc-12", "12.2.0-14")
    assert (by_name["hello"].source, by_name["tzdata"].architecture) == ("hello", "all")
    assert by_name["hello"].licenses == ("GPL-3+", "LGPL-2.1+ or GPL-2+")
    assert by_name["libc6"].licenses == ()  # a copyright file in free form states no license we can read
    assert by_name["libgcc-s1"].licenses == ("GPL-3+ with GCC-exception-3.1", "MIT")  # through the doc link
    assert by_name["tzdata"].licenses == by_name["hello"].licenses  # the link followed inside the tree
    assert inventory.os_release == {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "VERSION_ID": "12",
                                    "VERSION_CODENAME": "bookworm", "ID": "debian"}
    assert Inventory.from_record(json.loads(json.dumps(inventory.to_record()))) == inventory


def test_an_absolute_link_out_of_the_tree_is_read_inside_it(tmp_path: Path) -> None:
    root = root_tree(tmp_path / "root", tmp_path / "host")
    host = tmp_path / "host"
    # A doc folder linked to a folder that exists on the host under the same absolute path.
    (root / "usr/share/doc/evil").symlink_to(host)
    assert loop_tree(root).read_file("/usr/share/doc/evil/copyright") is None
    assert (host / "copyright").exists()


def test_stated_licenses_need_the_machine_readable_format() -> None:
    assert stated_licenses(DEP5.replace("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
                                        "Format-Specification: http://svn.debian.org/wsvn/dep/web/deps/dep5.mdwn")) \
        == ()
    assert stated_licenses("Format: http://dep.debian.net/deps/dep5\n\nFiles: *\nLicense: BSD-3-clause\n") \
        == ("BSD-3-clause",)
    assert stated_licenses("") == ()


def layers() -> tuple[RenderedLayer, ...]:
    common = RenderedLayer("common", (
        OverlayFile("etc/cluster-note", b"picluster common\n", 0o644),
        OverlayFile("etc/motd", b"common motd\n", 0o644),
    ))
    k3s = RenderedLayer("k3s v1.31.4+k3s1 arm64", (
        OverlayFile("usr/local/bin/k3s", b"\x7fELF k3s binary", 0o755),
        OverlayFile("var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst", b"airgap", 0o644),
    ))
    worker = RenderedLayer("worker", (
        OverlayFile("etc/motd", b"worker motd\n", 0o644),  # replaces the common layer's
        OverlayFile("etc/localtime", b"/usr/share/zoneinfo/Etc/UTC", 0o777, symlink=True),
        OverlayFile("user-data", b"#cloud-config\n", 0o644, boot=True),
    ))
    return common, k3s, worker


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_sbom_lists_packages_k3s_and_files_and_validates(tmp_path: Path) -> None:
    require_programs("dpkg-query")
    tree = loop_tree(root_tree(tmp_path / "root", tmp_path / "host"))
    inventory = read_inventory(tree.list_packages(), tree.read_file)
    contents = ImageContents(inventory, layers(), "/boot/firmware", "k3s v1.31.4+k3s1 arm64")
    text = render_sbom(contents, ImageFile("worker.img", "ab" * 32, 3 << 30), cluster="picluster", role="worker",
                       base="bootstrap:bookworm:raspios", k3s_version="v1.31.4+k3s1")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    validate_sbom(text)
    doc = json.loads(text)
    assert (doc["bomFormat"], doc["specVersion"]) == ("CycloneDX", SCHEMA)
    subject = doc["metadata"]["component"]
    assert subject["hashes"] == [{"alg": "SHA-256", "content": "ab" * 32}]
    assert {"name": "imagebuilder:file", "value": "worker.img"} in subject["properties"]
    components = {c["bom-ref"]: c for c in doc["components"]}

    libc = components["pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=arm64&distro=debian-12"]
    assert (libc["name"], libc["version"], libc["type"]) == ("libc6", "2.36-9+deb12u10", "library")
    assert "licenses" not in libc
    (source,) = libc["pedigree"]["ancestors"]
    assert source["purl"] == "pkg:deb/debian/glibc@2.36-9%2Bdeb12u10?arch=source&distro=debian-12"
    hello = components["pkg:deb/debian/hello@2.10-3?arch=arm64&distro=debian-12"]
    assert sorted(lic["license"].get("name") or lic["license"]["id"] for lic in hello["licenses"]) == \
        ["GPL-3+", "LGPL-2.1+ or GPL-2+"]
    gcc = components["pkg:deb/debian/libgcc-s1@12.2.0-14?arch=arm64&distro=debian-12"]
    assert {"id": "MIT", "acknowledgement": "declared"} in [lic["license"] for lic in gcc["licenses"]]
    assert not any(c["name"] == "oldtool" for c in doc["components"])
    assert components["os"]["name"] == "debian" and components["os"]["version"] == "12"

    k3s = components["k3s"]
    assert (k3s["type"], k3s["version"], k3s["purl"]) == ("application", "v1.31.4+k3s1",
                                                          "pkg:github/k3s-io/k3s@v1.31.4%2Bk3s1")
    assert k3s["hashes"][0]["content"] == sha256(b"\x7fELF k3s binary")
    airgap = components["file:/var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst"]
    assert (airgap["name"], airgap["hashes"][0]["content"]) == ("k3s-airgap-images-arm64.tar.zst", sha256(b"airgap"))
    assert "file:/usr/local/bin/k3s" not in components

    assert components["file:/etc/motd"]["hashes"][0]["content"] == sha256(b"worker motd\n")  # the last writer
    assert {"name": "imagebuilder:layer", "value": "worker"} in components["file:/etc/motd"]["properties"]
    assert components["file:/etc/cluster-note"]["hashes"][0]["content"] == sha256(b"picluster common\n")
    assert components["file:/boot/firmware/user-data"]["hashes"][0]["content"] == sha256(b"#cloud-config\n")
    link = components["file:/etc/localtime"]
    assert "hashes" not in link
    assert {"name": "imagebuilder:symlink", "value": "/usr/share/zoneinfo/Etc/UTC"} in link["properties"]
    # Every component is something the image holds.
    (depends,) = [d for d in doc["dependencies"] if d["ref"] == subject["bom-ref"]]
    assert sorted(depends["dependsOn"]) == sorted(components)


def test_the_same_image_gives_the_same_sbom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_programs("dpkg-query")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    tree = loop_tree(root_tree(tmp_path / "root", tmp_path / "host"))
    contents = ImageContents(read_inventory(tree.list_packages(), tree.read_file), layers(), "/boot/firmware")
    image = ImageFile("master.img", "cd" * 32, 1 << 30)
    texts = [render_sbom(contents, image, cluster="c", role="master", base="b", k3s_version="v1") for _ in range(2)]
    assert texts[0] == texts[1]
    assert json.loads(texts[0])["metadata"]["timestamp"] == "2023-11-14T22:13:20+00:00"
    # Without the k3s layer named, its files are files like any other.
    assert '"file:/usr/local/bin/k3s"' in texts[0]


def test_an_sbom_that_breaks_the_schema_is_refused(tmp_path: Path) -> None:
    require_programs("dpkg-query")
    tree = loop_tree(root_tree(tmp_path / "root", tmp_path / "host"))
    contents = ImageContents(read_inventory(tree.list_packages(), tree.read_file), layers(), "/boot/firmware")
    doc = json.loads(render_sbom(contents, ImageFile("master.img", "cd" * 32, 1), cluster="c", role="master",
                                 base="b", k3s_version="v1"))
    doc["components"][0]["type"] = "gadget"
    with pytest.raises(ValueError, match="does not validate against CycloneDX"):
        validate_sbom(json.dumps(doc))
    doc["components"][0]["type"] = "library"
    validate_sbom(json.dumps(doc))


def test_a_stage_an_image_comes_from_is_made_again_without_its_inventory(tmp_path: Path) -> None:
    image = tmp_path / "worker-0123.img"
    image.write_bytes(b"\0" * 4096)
    record = StageRecord({}, (), (), "", 4096, Usage(4096, (), 0), ())
    emitted = Stage(name="worker", parent=tmp_path / "parent.img", parent_key="", packages=(), layers=(),
                    arch="arm64", layout=LAYOUTS["raspios"], backend=LoopBackend(), verify=True)
    inner = Stage(name="worker-packages", parent=tmp_path / "parent.img", parent_key="", packages=("hello",),
                  layers=(), arch="arm64", layout=LAYOUTS["raspios"], backend=LoopBackend())
    write_record(image, record)
    assert isinstance(usable_record(image, emitted), Unusable)
    assert usable_record(image, inner) == record
    record = dataclasses.replace(record, boards=("pi4b",), inventory=Inventory({}, ()))
    write_record(image, record)
    assert usable_record(image, emitted) == record
