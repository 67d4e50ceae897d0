import hashlib

import pytest

from pipelines import storage


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    storage.write_text(str(target), "hello")
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "file.bin"
    storage.write_bytes(str(target), b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_open(str(target)) as handle:
            handle.write(b"new, half written")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_sha256_golden_and_streaming(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert storage.sha256_file(str(path)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = tmp_path / "big"
    payload = bytes(range(256)) * 10_000  # spans several 1 MiB chunks
    big.write_bytes(payload)
    assert storage.sha256_file(str(big)) == hashlib.sha256(payload).hexdigest()


def test_fsspec_urls_work_beyond_local_paths():
    url = "memory://mixpipe-test/dir/obj.json"
    storage.write_json(url, {"b": 1, "a": [1, 2]})
    assert storage.read_json(url) == {"a": [1, 2], "b": 1}
    assert storage.read_bytes(url).decode().startswith('{\n  "a"')  # sorted, stable
    assert storage.join("s3://bucket/", "/x/", "y") == "s3://bucket/x/y"


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("s3://bucket/mixpipe", None),
        ("gs://bucket", None),
        ("/mnt/shared/mixpipe", None),
        ("file:///mnt/shared", None),
        ("relative/dir", "an absolute path every node mounts"),
        ("ftp://host/x", "scheme ftp:// is not supported"),
        ("s3:///prefix", "names no bucket"),
        ("s3://bucket/x?endpoint=http://minio:9000", "must not have a query string"),
    ],
)
def test_shared_uri_is_checked(uri, problem):
    if problem is None:
        assert storage.check_shared_uri(uri) == uri
    else:
        with pytest.raises(ValueError, match=problem):
            storage.check_shared_uri(uri)


def test_options_hold_no_credentials_at_any_depth():
    assert storage.check_options({"endpoint_url": "http://x", "client_kwargs": {"region_name": "eu"}})
    with pytest.raises(ValueError, match=r"client_kwargs\.aws_secret_access_key"):
        storage.check_options({"client_kwargs": {"aws_secret_access_key": "x"}})


def test_configured_options_reach_the_filesystem_of_their_protocol_only(monkeypatch):
    monkeypatch.delenv(storage.OPTIONS_ENV, raising=False)
    storage.configure({"skip_instance_cache": True}, "memory")
    assert storage.options_for("memory") == {"skip_instance_cache": True} and storage.options_for("file") == {}
    fs, path = storage.filesystem("memory://bucket/a")
    assert "memory" in fs.protocol and path == "/bucket/a"
    storage.configure({}, None)
    assert storage.OPTIONS_ENV not in __import__("os").environ


def test_object_store_writes_are_direct_and_ray_gets_the_same_filesystem():
    import fsspec
    import pyarrow.fs

    storage.write_bytes("memory://bucket/dir/blob", b"whole")
    assert fsspec.filesystem("memory").ls("/bucket/dir", detail=False) == ["/bucket/dir/blob"]  # no temp name
    arrow, path = storage.arrow_filesystem("memory://bucket/dir")
    assert isinstance(arrow, pyarrow.fs.PyFileSystem) and path == "/bucket/dir"
    assert arrow.open_input_file(f"{path}/blob").read() == b"whole"
    assert storage.arrow_filesystem("/local/ray") == (None, "/local/ray")
    fsspec.filesystem("memory").rm("/bucket", recursive=True)
