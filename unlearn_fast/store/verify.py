"""``unlearn-fast verify WORK_DIR``: check every artefact of a work directory against the digests written with it.

Every file with a sum (store.integrity) is hashed again; every chunked array is opened (header, byte size, masks) and
each done chunk's rows are hashed against ``digests.npy``. A symbolic link anywhere inside is reported (the store never
follows one). ``repair=True`` removes exactly what is damaged (a damaged file and its sum, a chunked array whose
file is the wrong size, only the done-marks of chunks whose rows changed), so the next run recomputes only that.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .chunked import ChunkedArray, load_json_checked
from .errors import DamagedArtefactError, StoreMismatchError
from .integrity import FOLDER_SUMS, SUM_SUFFIX, check_folder, file_digest, read_sum, sum_path
from .workdir import LOCK, MANIFEST, read_manifest


@dataclass
class Finding:
    path: str  # relative to the work directory
    problem: str
    repair: str  # what --repair does (or did) about it


@dataclass
class VerifyReport:
    work_dir: str
    checked_files: int = 0
    checked_chunks: int = 0
    unchecked: list[str] = field(default_factory=list)  # files written before sums existed
    damaged: list[Finding] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.damaged

    def summary(self) -> dict:
        return {"work_dir": self.work_dir, "ok": self.ok, "checked_files": self.checked_files,
                "checked_chunks": self.checked_chunks, "unchecked": len(self.unchecked),
                "damaged": [vars(f) for f in self.damaged], "repaired": self.repaired}


def verify_work_dir(path: str | os.PathLike, repair: bool = False) -> VerifyReport:
    """Check (and with repair=True, remove what is damaged in) the work directory at `path`."""
    from .lock import FileLock

    root = Path(path)
    if not root.is_dir():
        raise StoreMismatchError(f"{root}: no such work directory")
    read_manifest(root)  # a damaged manifest is a one-line error: nothing in the folder can be trusted then
    if not (root / MANIFEST).is_file():
        raise StoreMismatchError(f"{root} has no {MANIFEST}: it is not a work directory")
    report = VerifyReport(work_dir=str(root))
    with FileLock(root / LOCK):  # no command may write while files are checked or removed
        _walk(root, root, report, repair)
    report.repaired = repair and bool(report.damaged)
    return report


def _walk(root: Path, folder: Path, report: VerifyReport, repair: bool) -> None:
    entries = sorted(folder.iterdir())
    is_array = (folder / "meta.json").is_file() and any((folder / n).exists() for n in ("data.npy", "done.npy"))
    if folder != root and is_array:
        _check_array(root, folder, report, repair)
        entries = [e for e in entries if e.name == "parts" and e.is_dir() and not e.is_symlink()]
    elif folder != root and (folder / FOLDER_SUMS).is_file():  # an output folder: its files listed in one file
        _check_output_folder(root, folder, report, repair)
        return
    for entry in entries:
        name = entry.name
        relative = str(entry.relative_to(root))
        if not entry.exists() and not entry.is_symlink():
            continue  # removed by this repair (a damaged file's checksum)
        if entry.is_symlink():
            if _inside(root, entry):
                continue  # a link the store made (attributions/latest), to a folder inside: checked there
            report.damaged.append(Finding(relative, f"a symbolic link (to {os.readlink(entry)})",
                                          "link removed (its target is untouched)"))
            if repair:
                entry.unlink()
        elif entry.is_dir():
            _walk(root, entry, report, repair)
        elif name == LOCK or name.startswith(LOCK + ".") or name.endswith(".tmp") or name == "log.txt":
            continue
        elif name.endswith(SUM_SUFFIX):
            if not entry.with_name(name[: -len(SUM_SUFFIX)]).exists():
                report.damaged.append(Finding(relative, "a checksum without its file", "checksum removed"))
                if repair:
                    entry.unlink(missing_ok=True)
        else:
            _check_file(root, entry, report, repair)


def _inside(root: Path, link: Path) -> bool:
    """A relative link whose target lies inside the work directory."""
    target = os.readlink(link)
    return not os.path.isabs(target) and Path(os.path.realpath(link)).is_relative_to(Path(os.path.realpath(root)))


def _check_file(root: Path, path: Path, report: VerifyReport, repair: bool) -> None:
    relative = str(path.relative_to(root))
    try:
        recorded = read_sum(path)
    except DamagedArtefactError:
        recorded = {"bytes": -1, "blake2b": ""}
    if recorded is None:
        report.unchecked.append(relative)
        return
    report.checked_files += 1
    size, digest = file_digest(path)
    if size != recorded["bytes"]:
        problem = f"{size} bytes, its checksum says {recorded['bytes']}"
    elif digest != recorded["blake2b"]:
        problem = "its bytes differ from its checksum"
    else:
        return
    if path.name == MANIFEST and path.parent == root:
        report.damaged.append(Finding(relative, problem, "none: the record of the inputs is lost; use another "
                                      "--work-dir"))
        return
    report.damaged.append(Finding(relative, problem, "file removed, recomputed by the next run"))
    if repair:
        path.unlink()
        sum_path(path).unlink(missing_ok=True)


def _check_output_folder(root: Path, folder: Path, report: VerifyReport, repair: bool) -> None:
    relative = str(folder.relative_to(root))
    try:
        checked, problems = check_folder(folder)
    except DamagedArtefactError as error:
        checked, problems = 0, [(FOLDER_SUMS, str(error))]
    report.checked_files += checked
    links = [p for p in folder.rglob("*") if p.is_symlink()]
    problems += [(str(p.relative_to(folder)), f"a symbolic link (to {os.readlink(p)})") for p in links]
    if problems:
        shown = "; ".join(f"{name}: {problem}" for name, problem in problems[:3])
        report.damaged.append(Finding(relative, f"{len(problems)} damaged file(s) ({shown})",
                                      "output folder removed: attribute the query again (its scores are kept)"))
        if repair:
            shutil.rmtree(folder)


def _check_array(root: Path, folder: Path, report: VerifyReport, repair: bool) -> None:
    relative = str(folder.relative_to(root))
    try:
        meta = load_json_checked(folder / "meta.json")
        array = ChunkedArray(folder, tuple(meta["shape"]), int(meta["chunk_rows"]), meta.get("dtype", "float32"))
    except (DamagedArtefactError, KeyError, TypeError, ValueError) as error:
        reason = str(error).split("; ")[0]
        report.damaged.append(Finding(relative, reason, "array removed, recomputed by the next run"))
        if repair:
            shutil.rmtree(folder)
        return
    bad = array.verify()
    report.checked_chunks += int(array._done.sum())
    for name in ("meta.json", "done.npy", "digests.npy"):
        report.checked_files += sum_path(folder / name).exists()
    if bad:
        rows = ", ".join(f"[{a}, {b})" for a, b in map(array.chunk_bounds, bad[:5])) + (" ..." if len(bad) > 5 else "")
        report.damaged.append(Finding(relative, f"{len(bad)} of {array.num_chunks} chunks differ from their digests "
                                      f"(rows {rows})", "those chunks marked not done, recomputed by the next run"))
        if repair:
            array.forget(bad)
