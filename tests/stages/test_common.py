from stages.common import code_version


def test_code_version_changes_with_any_source_file(tmp_path):
    (tmp_path / "pipelines" / "sub").mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    (tmp_path / "pipelines" / "sub" / "a.py").write_text("x = 1\n")
    (tmp_path / "stages" / "b.py").write_text("y = 2\n")
    (tmp_path / "pipelines" / "notes.txt").write_text("not code")
    first = code_version(base=tmp_path)
    assert code_version(base=tmp_path) == first
    (tmp_path / "pipelines" / "notes.txt").write_text("still not code")
    assert code_version(base=tmp_path) == first
    (tmp_path / "stages" / "b.py").write_text("y = 3\n")
    second = code_version(base=tmp_path)
    assert second != first
    (tmp_path / "stages" / "b.py").rename(tmp_path / "stages" / "c.py")
    assert code_version(base=tmp_path) not in (first, second)
