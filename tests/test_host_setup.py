"""host.setup where the distribution lacks Vagrant (Ubuntu from 24.04 on): advice, never apt's bare error."""

import shutil

import pytest

from bpflab import host


def test_no_vagrant_package_says_how_to_get_it_from_hashicorp():
    advice = host.vagrant_advice(["vagrant", "vagrant-libvirt"], set(), plugin_installed=False)
    assert "https://apt.releases.hashicorp.com" in advice and "vagrant plugin install vagrant-libvirt" in advice
    assert "libvirt-dev" in advice and advice.rstrip().endswith("`invoke host.setup` again.")


def test_vagrant_without_a_libvirt_package_gets_the_plugin_advice():
    advice = host.vagrant_advice(["vagrant-libvirt"], set(), plugin_installed=False)
    assert "vagrant plugin install vagrant-libvirt" in advice and "hashicorp" not in advice.lower()
    assert host.vagrant_advice(["vagrant-libvirt"], set(), plugin_installed=True) is None


def test_packages_the_distribution_offers_are_simply_installed():
    assert host.vagrant_advice(["vagrant", "vagrant-libvirt"], {"vagrant", "vagrant-libvirt"}, False) is None
    assert host.vagrant_advice([], set(), False) is None


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="needs apt (a Debian or Ubuntu host)")
def test_candidates_come_from_the_hosts_apt():
    assert host.with_candidate(["bash", "bpflab-no-such-package"]) == {"bash"}
