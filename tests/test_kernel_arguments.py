"""Kernel arguments land on cmdline.txt and, where the base's firmware hook rewrites it, where it reads them."""

from __future__ import annotations

from pathlib import Path

from imagebuilder.layers.write import add_kernel_arguments_in_tree, with_arguments

DEBIAN_HOOK = '''#!/bin/sh
if [ -f /etc/default/raspi-extra-cmdline ] ; then
  user_cmdline="$(cat /etc/default/raspi-extra-cmdline)"
fi
'''
RASPIOS_HOOK = '''#!/bin/sh
cp -v "$image_path" "$kernel_dst"
'''


def make_tree(root: Path, hook: str | None) -> None:
    (root / "boot/firmware").mkdir(parents=True)
    (root / "boot/firmware/cmdline.txt").write_text("console=serial0,115200 root=LABEL=RASPIROOT rootwait\n")
    if hook is not None:
        (root / "etc/kernel/postinst.d").mkdir(parents=True)
        (root / "etc/kernel/postinst.d/z50-raspi-firmware").write_text(hook)


def test_arguments_are_added_once_and_the_line_stays_one_line() -> None:
    assert with_arguments("a b\n", ["c", "a", "d"]) == "a b c d\n"
    assert with_arguments("", ["c"]) == "c\n"


def test_a_debian_base_keeps_them_across_kernel_updates(tmp_path: Path) -> None:
    make_tree(tmp_path, DEBIAN_HOOK)
    (tmp_path / "etc/default").mkdir()
    (tmp_path / "etc/default/raspi-extra-cmdline").write_text("quiet\n")
    written = add_kernel_arguments_in_tree(tmp_path, "/boot/firmware", ["cgroup_memory=1", "cgroup_enable=memory"])
    assert written == ["/boot/firmware/cmdline.txt", "/etc/default/raspi-extra-cmdline"]
    assert (tmp_path / "etc/default/raspi-extra-cmdline").read_text() == "quiet cgroup_memory=1 cgroup_enable=memory\n"
    assert (tmp_path / "boot/firmware/cmdline.txt").read_text().endswith("rootwait cgroup_memory=1 "
                                                                         "cgroup_enable=memory\n")


def test_bases_that_never_rewrite_cmdline_get_no_extra_file(tmp_path: Path) -> None:
    for name, hook in (("raspios", RASPIOS_HOOK), ("ubuntu", None)):
        root = tmp_path / name
        make_tree(root, hook)
        assert add_kernel_arguments_in_tree(root, "/boot/firmware", ["x=1"]) == ["/boot/firmware/cmdline.txt"]
        assert not (root / "etc/default/raspi-extra-cmdline").exists()


def test_a_link_in_the_image_is_followed_inside_it(tmp_path: Path) -> None:
    make_tree(tmp_path, DEBIAN_HOOK)
    (tmp_path / "etc/default").symlink_to("/srv/defaults")  # absolute: the image's /srv, never the host's
    add_kernel_arguments_in_tree(tmp_path, "/boot/firmware", ["x=1"])
    assert (tmp_path / "srv/defaults/raspi-extra-cmdline").read_text() == "x=1\n"
