"""A deploy's footprint and the store check before it: a store path that cannot be."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetops import ConfigError
from fleetops.control._footprint import Footprint
from fleetops.control._preflight import check_store_directory
from fleetops.spec import load_spec


def _spec(tmp_path: Path, store: str) -> Path:
    (tmp_path / "fleet.yaml").write_text(
        f"fleet: {{name: demo}}\nstore: {store}\n"
        "clusters:\n"
        "  triage:\n"
        '    agents: [{name: smoke, entrypoint: "fleetops.control._smoke:smoke"}]\n',
        encoding="utf-8",
    )
    return tmp_path / "fleet.yaml"


def test_undo_passes_over_files_that_cannot_be_under_a_regular_file(tmp_path: Path) -> None:
    """A store path under a regular file: taking back its lock file raised
    NotADirectoryError, in the middle of the cleanup of a failed deploy."""
    (tmp_path / "plain").write_text("x", encoding="utf-8")
    under = tmp_path / "plain" / "x.db"
    made = tmp_path / "made"
    footprint = Footprint(
        files=[under, Path(f"{under}-control.lock")], restored=[under], dirs=[made]
    )
    made.mkdir()
    footprint.undo()
    assert not made.exists()
    assert (tmp_path / "plain").read_text(encoding="utf-8") == "x"


def test_a_store_under_a_regular_file_is_refused_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x", encoding="utf-8")
    spec = load_spec(_spec(tmp_path, "sqlite:///plain/deeper/x.db"))
    with pytest.raises(ConfigError) as refused:
        check_store_directory(spec)
    assert refused.value.field == "store"
    assert refused.value.value == "sqlite:///plain/deeper/x.db"
    assert f"{tmp_path / 'plain'} is a file, not a directory" in refused.value.fix
    assert "sqlite:///.fleetops/fleet.db" in refused.value.fix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.yaml", "plain"]


def test_a_store_directory_the_file_system_will_not_make_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As /proc answers a mkdir: the error named no field and no fix."""
    spec = load_spec(_spec(tmp_path, "sqlite:///a/b/x.db"))

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(ConfigError) as refused:
        check_store_directory(spec)
    assert refused.value.field == "store"
    assert f"the directory {tmp_path / 'a'} cannot be made" in refused.value.fix


def test_a_store_directory_that_can_be_made_passes_and_is_not_left_behind(
    tmp_path: Path,
) -> None:
    check_store_directory(load_spec(_spec(tmp_path, "sqlite:///a/b/x.db")))
    check_store_directory(load_spec(_spec(tmp_path, "sqlite:///x.db")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.yaml"]


def test_a_store_directory_another_process_makes_meanwhile_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(_spec(tmp_path, "sqlite:///a/x.db"))
    real = Path.mkdir

    def made_meanwhile(self: Path, *args: object, **kwargs: object) -> None:
        real(self)  # the other process's
        raise FileExistsError(17, "File exists", str(self))

    monkeypatch.setattr(Path, "mkdir", made_meanwhile)
    check_store_directory(spec)
    assert (tmp_path / "a").is_dir()  # theirs, left as it is


def test_a_store_under_a_link_to_nothing_is_refused_saying_so(tmp_path: Path) -> None:
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError) as refused:
        check_store_directory(load_spec(_spec(tmp_path, "sqlite:///gone/x.db")))
    assert f"{tmp_path / 'gone'} is a link to nothing" in refused.value.fix


def test_a_store_behind_a_directory_that_may_not_be_searched_is_refused_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Path.exists answers a user who may not search a directory on the way."""
    spec = load_spec(_spec(tmp_path, "sqlite:///locked/a/x.db"))
    real = Path.exists

    def exists(self: Path) -> bool:
        if self.parent.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "exists", exists)
    with pytest.raises(ConfigError) as refused:
        check_store_directory(spec)
    assert refused.value.field == "store"
    assert "cannot be reached (Permission denied)" in refused.value.fix
