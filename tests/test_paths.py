"""seamline.core.data.paths: server-side paths are read only inside the data roots."""

import os
from pathlib import Path

import pytest

from seamline.core.data.paths import (
    DATA_ROOTS_ENV,
    data_roots,
    resolve_under,
    roots_from_env,
    roots_to_env,
)
from seamline.core.errors import InputFileError, PathOutsideRootsError


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """A data root with a folder and a sibling 'secret' folder outside it."""
    root, secret = tmp_path / "root", tmp_path / "secret"
    (root / "scenes").mkdir(parents=True)
    secret.mkdir()
    (secret / "key.txt").write_text("private")
    return {"root": root, "scenes": root / "scenes", "secret": secret}


def test_a_folder_inside_is_resolved(tree):
    assert resolve_under(tree["scenes"], [tree["root"]]) == tree["scenes"].resolve()
    assert resolve_under("scenes", [tree["root"]]) == tree["scenes"].resolve()  # relative


@pytest.mark.parametrize(
    "attempt",
    [
        lambda t: t["root"] / ".." / "secret",  # ../ from an absolute path
        lambda t: "../secret",  # ../ relative to the root
        lambda t: "scenes/../../secret/key.txt",
        lambda t: t["secret"],  # absolute, outside
        lambda t: "/etc",
        lambda t: t["secret"] / "missing",  # missing and outside: still "outside"
    ],
)
def test_traversal_and_absolute_paths_outside_are_refused(tree, attempt):
    with pytest.raises(PathOutsideRootsError, match="outside the data roots"):
        resolve_under(attempt(tree), [tree["root"]])


def test_a_symlink_escaping_the_root_is_refused(tree):
    (tree["scenes"] / "escape").symlink_to(tree["secret"], target_is_directory=True)
    (tree["scenes"] / "key.tif").symlink_to(tree["secret"] / "key.txt")
    for path in ("scenes/escape", tree["scenes"] / "key.tif", "scenes/escape/key.txt"):
        with pytest.raises(PathOutsideRootsError, match="outside the data roots"):
            resolve_under(path, [tree["root"]])


def test_behind_an_escaping_symlink_existing_and_missing_files_answer_alike(tree):
    """Review attack: ``escape/key.txt`` said "outside" and ``escape/nothing.txt`` said "does
    not exist under the data roots", so a visitor could probe which server files exist."""
    (tree["scenes"] / "escape").symlink_to(tree["secret"], target_is_directory=True)
    (tree["scenes"] / "gone.tif").symlink_to(tree["secret"] / "gone.txt")  # dangling, outside
    answers = set()
    for path in ("key.txt", "nothing.txt", "nothing/deeper.txt"):
        with pytest.raises(PathOutsideRootsError) as refused:
            resolve_under(f"scenes/escape/{path}", [tree["root"]])
        answers.add(str(refused.value).replace(path, "NAME"))
    assert len(answers) == 1
    with pytest.raises(PathOutsideRootsError):
        resolve_under("scenes/gone.tif", [tree["root"]])


def test_a_symlink_staying_inside_is_allowed(tree):
    (tree["root"] / "latest").symlink_to(tree["scenes"], target_is_directory=True)
    assert resolve_under("latest", [tree["root"]]) == tree["scenes"].resolve()


def test_a_symlink_into_a_second_root_is_allowed(tree):
    (tree["scenes"] / "other").symlink_to(tree["secret"], target_is_directory=True)
    roots = [tree["root"], tree["secret"]]
    assert resolve_under("scenes/other/key.txt", roots) == (tree["secret"] / "key.txt").resolve()


def test_a_missing_path_inside_says_so(tree):
    with pytest.raises(InputFileError, match="does not exist under the data roots"):
        resolve_under("scenes/2024", [tree["root"]])


def test_no_roots_reads_nothing(tree):
    with pytest.raises(PathOutsideRootsError, match="--data-root"):
        resolve_under(tree["scenes"], [])


def test_roots_travel_through_the_environment(tree):
    roots = data_roots([tree["root"], tree["secret"], tree["root"]])  # duplicates dropped
    assert roots == (tree["root"].resolve(), tree["secret"].resolve())
    assert roots_from_env({DATA_ROOTS_ENV: roots_to_env(roots)}) == roots
    assert roots_from_env({}) == ()
    with pytest.raises(InputFileError, match="is not a folder"):
        data_roots([tree["root"] / "none"])
    with pytest.raises(InputFileError, match="is not a folder"):
        roots_from_env({DATA_ROOTS_ENV: os.pathsep.join([str(tree["secret"] / "key.txt")])})
