"""Boxes that tests and benchmarks make: removing one from Vagrant and its image from libvirt's
pool (vagrant-libvirt leaves that behind, and each ready box is a new one), and a cached box
whose kernel has aged."""

import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bpflab import box

VIRSH = ["virsh", "-c", "qemu:///system"]


def remove_box(name: str) -> None:
    subprocess.run(["vagrant", "box", "remove", "--force", "--all", name], capture_output=True)
    listing = subprocess.run([*VIRSH, "vol-list", "default"], capture_output=True, text=True).stdout
    prefix = name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image"
    for volume in (line.split()[0] for line in listing.splitlines()[2:] if line.strip()):
        if volume.startswith(prefix):
            subprocess.run([*VIRSH, "vol-delete", "--pool", "default", volume], capture_output=True)


@dataclass(frozen=True)
class BackportsKernelRecipe(box.Recipe):
    """A Debian box whose kernel comes from the suite's backports, which its apt sources then lack."""

    def bootstrap_command(self, rootfs):
        *options, suite, target, mirror = super().bootstrap_command(rootfs)
        return [*options, "--customize-hook=sed -i /-backports/d \"$1/etc/apt/sources.list\"", suite, target,
                mirror, f"deb {self.mirror} {self.suite}-backports {' '.join(self.components)}"]


def cache_box_with_a_kernel_without_headers(settings):
    """Put in the box cache, for `settings`' recipe, a box that boots a kernel whose headers the VM
    cannot install: a box built before its kernel aged, as a VM meets it. The recipe, for removal."""
    recipe = box.current_recipe(settings)
    packages = tuple(f"{name}/{recipe.suite}-backports" if name.startswith("linux-image-") else name
                     for name in recipe.packages)
    variant = BackportsKernelRecipe(**{**asdict(recipe), "packages": packages})
    recipe.box_file.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=recipe.box_file.parent))
    try:
        box.build_file(variant, workdir, recipe.box_file.parent / "build.log")
        (recipe.box_file.parent / "recipe.json").write_text(recipe.to_json())
        (workdir / "bpflab.box").rename(recipe.box_file)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return recipe


def forget_cached_box(recipe):
    remove_box(recipe.box_name)
    shutil.rmtree(recipe.box_file.parent, ignore_errors=True)
