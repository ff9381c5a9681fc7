"""File utilities (`hyplora.files`): atomic writes, the path test, PNG figures."""

import pytest

from hyplora.files import looks_like_path, pyplot, save_png, write_atomic


def test_write_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "a.txt"
    write_atomic(target, "one\n")
    write_atomic(target, "two\n")
    assert target.read_text() == "two\n" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_write_atomic_writes_bytes_and_leaves_no_temporary_file_when_it_fails(tmp_path):
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError):  # os.replace cannot put a file over a folder
        write_atomic(tmp_path / "folder", "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "folder"]


@pytest.mark.parametrize(
    "name,is_path",
    [
        ("svamp", False),
        ("HuggingFaceTB/SmolLM2-135M", False),
        ("gsm8k-train", False),
        ("data/mine.json", True),
        ("mine.jsonl", True),
        ("model.gguf", True),
        ("./folder", True),
        ("~/models/x", True),
        ("/abs/folder", True),
        ("a/b/c", True),
    ],
)
def test_looks_like_path(name, is_path):
    assert looks_like_path(name) is is_path


def test_an_existing_folder_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_like_path("runs") and not looks_like_path("other")


def test_save_png_writes_a_png_and_closes_the_figure(tmp_path):
    plt = pyplot()
    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    path = save_png(figure, tmp_path / "line.png", dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not plt.fignum_exists(figure.number)
    assert [p.name for p in tmp_path.iterdir()] == ["line.png"]
