"""A stand-in for BCC's repository (GitHub is unreachable here), for the source and
artifact mechanics: a small CMake project with a `bcc` Python package and tags."""

import subprocess

FAKE_CMAKE = """\
cmake_minimum_required(VERSION 3.10)
project(fakebcc C)
add_library(fakebcc SHARED fake.c)
target_link_libraries(fakebcc z)
install(TARGETS fakebcc LIBRARY DESTINATION lib)
install(FILES bcc/__init__.py DESTINATION lib/python3/dist-packages/bcc)
"""


def fake_bcc_repository(folder):
    """A small CMake project standing in for BCC: tags v1, v2 and a broken v3."""

    def git(*args):
        subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True)

    (folder / "bcc").mkdir(parents=True)
    (folder / "CMakeLists.txt").write_text(FAKE_CMAKE)
    git("init", "-q")
    git("config", "user.email", "lab@example.invalid")
    git("config", "user.name", "bpflab test")
    # It links zlib, so an export has a runtime package to name (zlib1g).
    for tag, body in (("v1", "return 1;"), ("v2", "return 2;"), ("v3-broken", "return")):
        source = (
            f"#include <zlib.h>\nint fake(void) {{ {body} }}\nconst char *fake_zlib(void) {{ return zlibVersion(); }}\n"
        )
        (folder / "fake.c").write_text(source)
        (folder / "bcc" / "__init__.py").write_text(f"__version__ = 'fake-{tag}'\n")
        git("add", "-A")
        git("commit", "-q", "-m", tag)
        git("tag", tag)


def fake_repository_tarball(folder):
    """The stand-in as a bare repository in a tarball, to unpack in the VM's /srv (file:///srv/fake-bcc.git)."""
    fake_bcc_repository(folder / "fake-bcc")
    subprocess.run(["git", "clone", "-q", "--bare", str(folder / "fake-bcc"), str(folder / "fake-bcc.git")], check=True)
    subprocess.run(["tar", "-czf", str(folder / "repo.tar.gz"), "-C", str(folder), "fake-bcc.git"], check=True)
    return folder / "repo.tar.gz"


def use_fake_bcc(settings, original, install, version, artifacts, build_on="vm", repository="file:///srv/fake-bcc.git"):
    """Write lab.yaml to take BCC from the stand-in, with only the tools its build needs. The
    repository must answer where the build runs (the VM's /srv by default)."""
    text = original.replace("install: auto", f"install: {install}").replace("build_on: auto", f"build_on: {build_on}")
    text = text.replace("repository: https://github.com/iovisor/bcc.git", f"repository: {repository}")
    text = text.replace("version: v0.37.0", f"version: {version}")
    text = text.replace("artifacts: ~/.cache/bpflab/bcc-artifacts", f"artifacts: {artifacts}")
    debian = text.index("    debian-12:", text.index("  distributions:"))
    build = text.index("      bcc_build:", debian)
    end = text.index("      bcc_package:", build)
    settings.write_text(text[:build] + "      bcc_build: [cmake, make, gcc, libc6-dev, zlib1g-dev, git]\n" + text[end:])


def stand_in_settings(settings, folder):
    """`use(install, version, build_on)`: writes lab.yaml (`settings`) to take BCC from a stand-in made
    in `folder`, with its own artifact folder; `use.restore()` writes lab.yaml back as it was. A build
    in the VM clones from its /srv (`use.repository`, the tarball to unpack there), a build on the host
    from `folder`."""
    original = settings.read_text()

    def use(install, version, build_on="vm"):
        repository = f"file://{folder / 'fake-bcc.git'}" if build_on != "vm" else "file:///srv/fake-bcc.git"
        use_fake_bcc(settings, original, install, version, folder / "artifacts", build_on, repository)

    use.artifacts = folder / "artifacts"
    use.repository = fake_repository_tarball(folder)
    use.restore = lambda: settings.write_text(original)
    return use
