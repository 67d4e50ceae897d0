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
