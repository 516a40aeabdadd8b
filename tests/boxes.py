"""Removing a box that a test or benchmark made: from Vagrant, and its image from libvirt's pool
(vagrant-libvirt leaves that behind, and each ready box is a new one)."""

import subprocess

VIRSH = ["virsh", "-c", "qemu:///system"]


def remove_box(name: str) -> None:
    subprocess.run(["vagrant", "box", "remove", "--force", "--all", name], capture_output=True)
    listing = subprocess.run([*VIRSH, "vol-list", "default"], capture_output=True, text=True).stdout
    prefix = name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image"
    for volume in (line.split()[0] for line in listing.splitlines()[2:] if line.strip()):
        if volume.startswith(prefix):
            subprocess.run([*VIRSH, "vol-delete", "--pool", "default", volume], capture_output=True)
