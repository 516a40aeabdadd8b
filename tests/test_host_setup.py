"""host.setup where the distribution lacks Vagrant (Ubuntu from 24.04 on): the libvirt engine, or
advice for the Vagrant engine, never apt's bare error."""

import shutil

import pytest

from bpflab import host


def test_no_vagrant_package_says_how_to_get_it_from_hashicorp():
    steps = host.vagrant_steps(["vagrant", "vagrant-libvirt"], set(), plugin_installed=False)
    advice = host.vagrant_advice(steps)
    assert "https://apt.releases.hashicorp.com" in advice and "vagrant plugin install vagrant-libvirt" in advice
    assert "libvirt-dev" in advice and advice.rstrip().endswith("`invoke host.setup --hashicorp` do all of it.")
    assert steps[-1] == ("vagrant plugin install vagrant-libvirt", False)  # the user's plugin, not root's


def test_vagrant_without_a_libvirt_package_gets_the_plugin_advice():
    steps = host.vagrant_steps(["vagrant-libvirt"], set(), plugin_installed=False)
    assert "vagrant plugin install vagrant-libvirt" in host.vagrant_advice(steps)
    assert steps == host.PLUGIN_STEPS and "hashicorp.list" not in host.vagrant_advice(steps)
    assert host.vagrant_steps(["vagrant-libvirt"], set(), plugin_installed=True) == []


def test_packages_the_distribution_offers_are_simply_installed():
    assert host.vagrant_steps(["vagrant", "vagrant-libvirt"], {"vagrant", "vagrant-libvirt"}, False) == []
    assert host.vagrant_steps([], set(), False) == [] and host.vagrant_advice([]) is None


def test_asked_to_it_runs_the_same_steps_it_shows(monkeypatch):
    ran = []
    monkeypatch.setattr(host, "run", lambda command, **_: ran.append(command))
    host.run_vagrant_steps(host.HASHICORP_STEPS + host.PLUGIN_STEPS)
    assert [command[-1] for command in ran] == [command for command, _ in host.HASHICORP_STEPS + host.PLUGIN_STEPS]


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="needs apt (a Debian or Ubuntu host)")
def test_candidates_come_from_the_hosts_apt():
    assert host.with_candidate(["bash", "bpflab-no-such-package"]) == {"bash"}


def test_without_a_vagrant_package_auto_takes_the_libvirt_engine_unless_hashicorps_is_asked_for():
    steps = host.vagrant_steps(["vagrant", "vagrant-libvirt"], set(), plugin_installed=False)
    assert host.libvirt_engine_instead("auto", steps, hashicorp=False)
    assert not host.libvirt_engine_instead("auto", steps, hashicorp=True)
    assert not host.libvirt_engine_instead("vagrant", steps, hashicorp=False)  # the advice, as before
    assert not host.libvirt_engine_instead("auto", [], hashicorp=False)  # the distribution's Vagrant
