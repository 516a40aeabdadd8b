"""Boxes that tests and benchmarks make: removing one from Vagrant and its images from libvirt's
pool (vagrant-libvirt's and the libvirt engine's stay behind, and each ready box is a new one),
and a cached box whose kernel has aged."""

import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bpflab import box
from bpflab.domain import box_volume
from bpflab.host import cache_dir

VIRSH = ["virsh", "-c", "qemu:///system"]


def remove_box(name: str) -> None:
    subprocess.run(["vagrant", "box", "remove", "--force", "--all", name], capture_output=True)
    listing = subprocess.run([*VIRSH, "vol-list", "default"], capture_output=True, text=True).stdout
    prefix = name.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image"
    engines = box_volume(name.rsplit("-", 1)[-1])  # the libvirt engine's
    for volume in (line.split()[0] for line in listing.splitlines()[2:] if line.strip()):
        if volume.startswith(prefix) or volume == engines:
            subprocess.run([*VIRSH, "vol-delete", "--pool", "default", volume], capture_output=True)


@dataclass(frozen=True)
class BackportsKernelRecipe(box.Recipe):
    """A Debian box whose kernel comes from the suite's backports, which its apt sources then lack."""

    def bootstrap_command(self, rootfs, runtime_packages=()):
        *options, suite, target, mirror = super().bootstrap_command(rootfs, runtime_packages)
        return [
            *options,
            '--customize-hook=sed -i /-backports/d "$1/etc/apt/sources.list"',
            suite,
            target,
            mirror,
            f"deb {self.mirror} {self.suite}-backports {' '.join(self.components)}",
        ]


def cache_box_with_a_kernel_without_headers(settings):
    """Put in the box cache, for `settings`' recipe, a box that boots a kernel whose headers the VM
    cannot install: a box built before its kernel aged, as a VM meets it. The recipe, for removal.
    The aged box itself is kept in a cache of its own, keyed by its recipe, for the next run."""
    recipe = box.current_recipe(settings)
    packages = tuple(
        f"{name}/{recipe.suite}-backports" if name.startswith("linux-image-") else name for name in recipe.packages
    )
    variant = BackportsKernelRecipe(**{**asdict(recipe), "packages": packages})
    aged = cache_dir() / "test-boxes" / variant.digest / "bpflab.box"
    if not aged.exists():
        aged.parent.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(dir=aged.parent))
        try:
            box.build_file(variant, workdir, aged.parent / "build.log")
            (workdir / box.BOOT_FOLDER).replace(aged.parent / box.BOOT_FOLDER)
            (workdir / "bpflab.box").rename(aged)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    recipe.box_file.parent.mkdir(parents=True, exist_ok=True)
    (recipe.box_file.parent / "recipe.json").write_text(recipe.to_json())
    recipe.box_file.unlink(missing_ok=True)
    os.link(aged, recipe.box_file)  # the same file system: no copy of a large image
    shutil.rmtree(recipe.box_file.parent / box.BOOT_FOLDER, ignore_errors=True)
    shutil.copytree(aged.parent / box.BOOT_FOLDER, recipe.box_file.parent / box.BOOT_FOLDER)  # the libvirt engine's
    return recipe


def forget_cached_box(recipe):
    remove_box(recipe.box_name)
    shutil.rmtree(recipe.box_file.parent, ignore_errors=True)
