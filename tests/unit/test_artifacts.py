"""The local artifact store: files under its folder, written whole, and no key that leads outside it."""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from pathlib import Path

import pytest

from babychain.artifacts import LocalArtifactStore, run_prefix


def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts", "http://127.0.0.1:9/files/")


def test_put_writes_the_file_and_answers_its_url(tmp_path: Path) -> None:
    artifacts = store(tmp_path)
    key = f"{run_prefix(str(uuid.uuid4()))}image_to_image/output-0.png"
    assert artifacts.put(key, b"png", "image/png") == f"http://127.0.0.1:9/files/{key}"
    assert (tmp_path / "artifacts" / key).read_bytes() == b"png"
    assert artifacts.path_for(key) == tmp_path.resolve() / "artifacts" / key
    assert not list((tmp_path / "artifacts").rglob("*.part"))


def test_outputs_of_one_step_share_its_folder(tmp_path: Path) -> None:
    artifacts = store(tmp_path)
    prefix = run_prefix(str(uuid.uuid4()))
    for index in range(3):
        artifacts.put(f"{prefix}text_to_image/output-{index}.jpg", bytes([index]), "image/jpeg")
    assert sorted(p.name for p in (tmp_path / "artifacts" / prefix / "text_to_image").iterdir()) == [
        "output-0.jpg",
        "output-1.jpg",
        "output-2.jpg",
    ]


def test_a_folder_removed_between_puts_is_made_again(tmp_path: Path) -> None:
    artifacts = store(tmp_path)
    run_id = str(uuid.uuid4())
    artifacts.put(f"{run_prefix(run_id)}video/output-0.mp4", b"a", "video/mp4")
    artifacts.delete_run(run_id)
    artifacts.put(f"{run_prefix(run_id)}video/output-1.mp4", b"b", "video/mp4")
    assert (tmp_path / "artifacts" / run_prefix(run_id) / "video" / "output-1.mp4").read_bytes() == b"b"


@pytest.mark.parametrize("key", ["../outside.png", "runs/../../outside.png", "/etc/passwd", "runs/a/../../../x"])
def test_keys_that_lead_outside_are_refused(tmp_path: Path, key: str) -> None:
    artifacts = store(tmp_path)
    with pytest.raises(ValueError, match="escapes the store"):
        artifacts.put(key, b"x", "image/png")
    assert not (tmp_path / "outside.png").exists()


def test_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    artifacts = store(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "artifacts" / "runs").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere", tmp_path / "artifacts" / "runs" / "link")
    with pytest.raises(ValueError, match="escapes the store"):
        artifacts.put("runs/link/output-0.png", b"x", "image/png")
    assert not list((tmp_path / "elsewhere").iterdir())


def test_a_link_at_the_file_itself_is_refused_when_it_leads_out(tmp_path: Path) -> None:
    artifacts = store(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    folder = tmp_path / "artifacts" / "runs" / "a"
    folder.mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere" / "x.png", folder / "output-0.png")
    with pytest.raises(ValueError, match="escapes the store"):
        artifacts.put("runs/a/output-0.png", b"x", "image/png")
    assert not list((tmp_path / "elsewhere").iterdir())


def test_a_link_that_stays_inside_is_followed_as_realpath_would(tmp_path: Path) -> None:
    artifacts = store(tmp_path)
    real = tmp_path / "artifacts" / "runs" / "real"
    real.mkdir(parents=True)
    os.symlink(real, tmp_path / "artifacts" / "runs" / "alias")
    artifacts.put("runs/alias/output-0.png", b"x", "image/png")
    assert (real / "output-0.png").read_bytes() == b"x"


@pytest.mark.parametrize(
    "key", ["runs/./a/x.png", "runs//a/x.png", "./runs/x.png", "runs/a/..", "runs/a b/x.png", "runs/ä/x.png"]
)
def test_keys_that_are_not_plain_names_are_resolved_as_before(tmp_path: Path, key: str) -> None:
    artifacts = store(tmp_path)
    expected = os.path.realpath(os.path.join(str(tmp_path / "artifacts"), key))
    assert artifacts._path(key) == expected


def test_a_plain_key_names_the_path_realpath_names(tmp_path: Path) -> None:
    artifacts = store(tmp_path)
    for key in ["runs/r/text_to_image/output-0.jpg", "runs/r/.hidden/x", "runs/r/..x/y", "a"]:
        assert artifacts._path(key) == os.path.realpath(os.path.join(str(tmp_path / "artifacts"), key))
    with pytest.raises(FileExistsError):
        (tmp_path / "artifacts" / "runs" / "f").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "artifacts" / "runs" / "f").write_bytes(b"")
        artifacts.put("runs/f/output-0.png", b"x", "image/png")


def test_a_stored_file_has_the_mode_open_gives_and_its_whole_content(tmp_path: Path) -> None:
    artifacts = store(tmp_path)
    content = bytes(range(256)) * 40_000  # 10 MB
    artifacts.put("runs/r/step/output-0.mp4", content, "video/mp4")
    artifacts.put("runs/r/step/output-0.mp4", b"again", "video/mp4")  # a second copy replaces the first whole
    stored = tmp_path / "artifacts" / "runs" / "r" / "step" / "output-0.mp4"
    reference = tmp_path / "reference"
    with open(reference, "wb") as f:
        f.write(b"x")
    assert stored.read_bytes() == b"again"
    assert stat.S_IMODE(stored.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)
    artifacts.put("runs/r/step/output-1.mp4", content, "video/mp4")
    assert (stored.parent / "output-1.mp4").read_bytes() == content
    assert sorted(p.name for p in stored.parent.iterdir()) == ["output-0.mp4", "output-1.mp4"]  # no .part left


def test_folders_are_made_at_any_depth_that_is_missing(tmp_path: Path) -> None:
    artifacts = store(tmp_path)
    for key in ["runs/r1/a/output-0.png", "runs/r1/b/output-0.png", "runs/r2/a/output-0.png", "x/y/z/w/output.png"]:
        artifacts.put(key, b"k", "image/png")
        assert (tmp_path / "artifacts" / key).read_bytes() == b"k"
    (tmp_path / "artifacts" / "runs" / "file").write_bytes(b"")
    with pytest.raises(OSError):
        artifacts.put("runs/file/a/output-0.png", b"k", "image/png")


def test_a_run_s_folders_cost_one_mkdir_each_and_no_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    artifacts = store(tmp_path)
    artifacts.put(f"{run_prefix(str(uuid.uuid4()))}text_to_image/output-0.jpg", b"a", "image/jpeg")  # `runs/`
    calls: list[str] = []
    for name in ("mkdir", "lstat", "stat"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _n=name, _f=real, **k: (calls.append(_n), _f(*a, **k))[1])
    prefix = run_prefix(str(uuid.uuid4()))
    for step in ("text_to_image", "image_to_image", "image_to_video"):
        artifacts.put(f"{prefix}{step}/output-0.bin", step.encode(), "application/octet-stream")
    assert calls == ["mkdir"] * 4  # the run's folder and each step's, nothing looked up
    for step in ("text_to_image", "image_to_image", "image_to_video"):
        assert (tmp_path / "artifacts" / prefix / step / "output-0.bin").read_bytes() == step.encode()


def test_another_container_s_folders_are_checked_once(tmp_path: Path) -> None:
    first, second = store(tmp_path), store(tmp_path)
    prefix = run_prefix(str(uuid.uuid4()))
    first.put(f"{prefix}text_to_image/output-0.jpg", b"a", "image/jpeg")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere" / "x", tmp_path / "artifacts" / prefix / "text_to_image" / "output-1.jpg")
    with pytest.raises(ValueError, match="escapes the store"):  # a folder it did not make: the file's name is checked
        second.put(f"{prefix}text_to_image/output-1.jpg", b"b", "image/jpeg")
    second.put(f"{prefix}image_to_image/output-0.png", b"c", "image/png")
    assert (tmp_path / "artifacts" / prefix / "image_to_image" / "output-0.png").read_bytes() == b"c"
    assert not list((tmp_path / "elsewhere").iterdir())


def test_a_link_at_the_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    artifacts = store(tmp_path)
    folder = tmp_path / "artifacts" / "runs" / "a"
    folder.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere" / "x.png", folder / "output-0.png.part")
    with pytest.raises(OSError):
        artifacts.put("runs/a/output-0.png", b"x", "image/png")
    assert not list((tmp_path / "elsewhere").iterdir())


def test_a_known_folder_removed_by_another_process_is_made_again(tmp_path: Path) -> None:
    artifacts = store(tmp_path)
    prefix = run_prefix(str(uuid.uuid4()))
    artifacts.put(f"{prefix}text_to_image/output-0.jpg", b"a", "image/jpeg")
    shutil.rmtree(tmp_path / "artifacts" / prefix)  # the sweeper's retention, in another container
    artifacts.put(f"{prefix}text_to_image/output-1.jpg", b"b", "image/jpeg")  # the same (known) folder
    artifacts.put(f"{prefix}image_to_image/output-0.png", b"c", "image/png")  # a new folder in the known run
    assert (tmp_path / "artifacts" / prefix / "text_to_image" / "output-1.jpg").read_bytes() == b"b"
    assert (tmp_path / "artifacts" / prefix / "image_to_image" / "output-0.png").read_bytes() == b"c"
