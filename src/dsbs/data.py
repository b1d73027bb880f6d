"""`dsbs data`: fetch the paper's released data, and inspect any task's rows and teacher answers."""

import hashlib
import json
import shutil
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

from dsbs.errors import DataError
from dsbs.files import replace_dir, write_atomic
from dsbs.names import PAPER_DATA_URL, default_cache_dir
from dsbs.tasks import TaskConfig, get_task

MANIFEST = ".dsbs-complete.json"  # written last: its presence means the unpacked tree is whole
MAX_UNPACKED_BYTES = 4 << 30  # the paper's datasets.zip unpacks to well under this


def _fetch(url: str, part: Path, timeout: float) -> int:
    """Download ``url`` into ``part``, continuing a partial file with a Range request; total size."""
    import urllib.error
    import urllib.request

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the partial file is already whole
            return have
        raise
    with response:
        if response.status == 206:
            total = int(response.headers["Content-Range"].rsplit("/", 1)[1])
            mode = "ab"
        else:  # the server ignored the range: start over
            total = int(response.headers.get("Content-Length", -1))
            have, mode = 0, "wb"
        from tqdm.auto import tqdm

        with open(part, mode) as f, tqdm(total=total if total > 0 else None, initial=have, unit="B",
                                          unit_scale=True, desc="download") as bar:
            while chunk := response.read(1 << 16):
                f.write(chunk)
                bar.update(len(chunk))
    if total > 0 and part.stat().st_size < total:  # the server closed early without an error
        raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")
    return total


def _unpack(archive: Path, target: Path, source: str, max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Extract into a staging dir beside ``target``, then move it into place in one rename.

    An archive that would unpack to more than ``max_bytes`` is refused before anything is written;
    the sizes its entries declare are checked, and each entry is copied counting what it really
    yields, so a header that lies is caught too.
    """
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = zf.infolist()
            for entry in entries:
                if entry.filename.startswith(("/", "\\")) or ".." in Path(entry.filename).parts:
                    raise DataError(f"{archive}: unsafe path in archive: {entry.filename!r}")
            declared = sum(e.file_size for e in entries)
            if declared > max_bytes:
                raise DataError(f"{archive}: unpacks to {declared:,} bytes, more than the limit of {max_bytes:,} "
                                "(max_unpacked_bytes); refusing it")
            _extract_bounded(zf, entries, staging, max_bytes, archive)
        entries = [p for p in staging.iterdir() if p.name != "__MACOSX"]
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        write_atomic(root / MANIFEST, json.dumps({"source": source, "unpacked_at": time.time()}))
        replace_dir(root, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_bounded(zf, entries, staging: Path, max_bytes: int, archive: Path) -> None:
    written = 0
    for entry in entries:
        path = staging / entry.filename
        if entry.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(entry) as source, open(path, "wb") as out:
            while chunk := source.read(1 << 20):
                written += len(chunk)
                if written > max_bytes:
                    raise DataError(f"{archive}: unpacks to more than the limit of {max_bytes:,} bytes "
                                    "(max_unpacked_bytes); refusing it")
                out.write(chunk)


def download(url: str = PAPER_DATA_URL, cache_dir: str | None = None, sha256: str | None = None,
             force: bool = False, retries: int = 3, timeout: float = 60.0,
             max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Fetch and unpack the paper's ``datasets.zip``; returns the data dir the loaders read."""
    import http.client
    import urllib.error

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / "datasets"
    if (target / MANIFEST).is_file() and not force:
        print(f"already downloaded: {target}")
        return target
    cache.mkdir(parents=True, exist_ok=True)
    part = cache / "datasets.zip.part"
    for attempt in range(1, retries + 1):
        try:
            total = _fetch(url, part, timeout)
            break
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:  # a broken transfer resumes
            if attempt == retries:
                raise DataError(f"download of {url} failed after {retries} attempts: {err}") from None
            print(f"download interrupted ({err}); resuming")
            time.sleep(min(2 ** attempt, 10))
    size = part.stat().st_size
    if total > 0 and size != total:
        raise DataError(f"{part}: got {size} bytes, expected {total}; run the command again to resume")
    if sha256:
        digest = hashlib.sha256(part.read_bytes()).hexdigest()
        if digest != sha256.lower():
            part.unlink()
            raise DataError(f"checksum mismatch for {url}: sha256 {digest}, expected {sha256}")
    if not zipfile.is_zipfile(part):
        part.unlink()
        raise DataError(f"{url} did not return a zip archive")
    _unpack(part, target, url, max_unpacked_bytes)
    part.unlink()
    print(f"data ready in {target}")
    return target


def inspect(task_config: TaskConfig, split: str | None = None) -> dict:
    """Rows, teacher parse failures, rationale lengths and the teacher's accuracy on gold labels."""
    task = get_task(task_config)
    split = split or task.test_split
    rows = task.load(split)
    answered = [e for e in rows if e.completion is not None or e.teacher_label is not None]
    # a parse failure: no label in the task's label space (never trained on)
    failures = [e for e in answered if e.teacher_label is None]
    graded = [e for e in answered if e.label is not None]
    # scored as the paper scores it: the label as the teacher wrote it, matched exactly
    written = [e.teacher_answer if e.teacher_answer is not None else e.teacher_label for e in graded]
    correct = sum(w is not None and task.labels_match(w, e.label) for w, e in zip(written, graded, strict=True))
    lengths = [len(e.rationale.split()) for e in rows if e.rationale]
    report = {
        "task": task.name, "split": split, "rows": len(rows), "labeled_rows": sum(e.label is not None for e in rows),
        "teacher_answers": len(answered), "parse_failures": len(failures),
        # the paper's scoring: an unparsable answer counts as wrong
        "teacher_accuracy": round(correct / len(graded), 4) if graded else None,
        "rationale_words": {
            "mean": round(statistics.fmean(lengths), 1), "median": statistics.median(lengths),
            "p90": sorted(lengths)[int(0.9 * (len(lengths) - 1))], "max": max(lengths),
        } if lengths else None,
    }
    return report
