from bpflab.sync import compare, manifest, parse_remote_manifest, tree_files


def test_tree_files_skips_caches(tmp_path):
    (tmp_path / "labs" / "__pycache__").mkdir(parents=True)
    (tmp_path / "labs" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "labs" / "hello.py").write_text("print()\n")
    (tmp_path / "bpf").mkdir()
    (tmp_path / "bpf" / "hello.bpf.c").write_text("int x;\n")
    assert sorted(tree_files(tmp_path)) == ["bpf/hello.bpf.c", "labs/hello.py"]


def test_remote_manifest_parsing():
    digest = "a" * 64
    text = f"{digest}  ./labs/hello.py\n{digest}  bpf/x.bpf.c\nsha256sum: y: Permission denied\n"
    assert parse_remote_manifest(text) == {"labs/hello.py": digest, "bpf/x.bpf.c": digest}


def test_compare_uploads_changes_and_deletes_leftovers():
    local = {"labs/a.py": "1", "labs/b.py": "2", "bpf/c.bpf.c": "3"}
    remote = {"labs/a.py": "1", "labs/b.py": "old", "labs/gone.py": "4"}
    difference = compare(local, remote)
    assert difference.upload == ["bpf/c.bpf.c", "labs/b.py"]
    assert difference.delete == ["labs/gone.py"]
    assert compare(local, dict(local)).empty


def test_manifest_is_content_hash(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text("same")
    second.write_text("same")
    hashes = manifest({"a": first, "b": second})
    assert hashes["a"] == hashes["b"] and len(hashes["a"]) == 64
