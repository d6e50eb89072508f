"""Reading a manifest: its samples, and the lines that cannot be samples with the reason why.

    samples, rejects = manifest_entries("videos/manifest.jsonl")   # every usable line, and the rest
    samples = read_manifest("videos/manifest.csv")                  # a ValueError at the first bad line

A manifest is one sample a line: `video` (a path relative to the manifest, or an http(s) URL),
`question`, `answer` (or `caption`), and optionally `title`, `description`, `tags`, `id`. What is read,
and how, for the files people really have:

- The suffix, in any case, picks the format: `.csv` comma-separated, `.tsv` tab-separated, anything else
  JSON Lines. The text must be UTF-8, with or without a byte-order mark (Excel's "CSV UTF-8" writes one);
  any other encoding is a ValueError naming the line and byte offset: save the file as UTF-8.
- CSV/TSV: the first row names the columns; quoted values may hold the delimiter and newlines; blank rows
  (",,,," too) are skipped. A line number is the physical line a row starts on (the header is line 1).
  A header without a column the samples need is a ValueError listing the columns it has.
- JSON Lines: lines end at "\\n" only ("\\r\\n" works; U+2028 or U+2029 inside a value does not end a
  line); blank lines are skipped but counted. A line that is not one JSON object (invalid JSON, a number,
  null, a list, a string, nesting too deep to parse) is a reject naming the line and why.
- Field names are matched after stripping spaces and lower-casing, in both formats ("Video " is `video`);
  two names that read alike on one line are a reject (a ValueError in a header). `caption` stands in for
  an empty or absent `answer`. Unknown fields are ignored.
- Values: `video` must be a string (spaces around it are stripped); `question`, `answer`, `title`,
  `description` and `id` may be text or numbers (numbers become text, 0 included); true/false, lists and
  objects are rejects. `tags` is a list of texts or numbers, or one string split at "," and ";".
  A required value that is absent, null or only spaces is missing: a reject.
- A local `video` that is a directory or a symlink loop is a reject. A missing file is not, here: the
  seq2seq trainer never opens the videos; `llava_dataset` and `vtt prepare` reject it.
- `id`: a line without one is named by its line number. An id given on two lines: the later line is a
  reject naming the first (predictions are keyed by id). Rejects carry their line's id when it has one.
- A manifest without a single sample line (empty, a header only, blank lines only) is a ValueError
  ("no samples"), so no command goes on to write an empty, unloadable dataset.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from vtt.data.download import is_url

REQUIRED = ("video", "question", "answer")
TEXT_FIELDS = ("question", "answer", "title", "description")


@dataclass
class Sample:
    """One manifest line, with its line number kept for error reports."""

    line: int
    video: str
    question: str
    answer: str
    id: str = ""
    title: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)


@dataclass
class Reject:
    """A sample left out, and why: written to rejects.jsonl."""

    line: int
    video: str
    reason: str
    kind: str = ""  # the reason without its file name, to count alike rejects together
    id: str = ""  # the line's `id` when it has one; last, so positional constructions keep working

    def json(self) -> str:
        return json.dumps(asdict(self))

    @property
    def where(self) -> str:
        """Where the sample is, for messages: line 7, or line 7 (id clip-12) when the line has an id."""
        return f"line {self.line}" + (f" (id {self.id})" if self.id else "")


class _Unreadable(NamedTuple):
    """A line that is not a sample at all (not a JSON object, a misaligned CSV row)."""

    reason: str
    kind: str


class _Bad(Exception):
    """A field that cannot be used: becomes the line's reject."""

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.reason, self.kind = reason, kind


def _decode(path: Path) -> str:
    data = path.read_bytes()
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = bom + err.start
        line = data[:offset].count(b"\n") + 1
        guess = " (it starts like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ValueError(
            f"{path}:{line}: not UTF-8{guess}: byte {offset} is 0x{data[offset]:02x}; save the manifest as UTF-8 "
            f'(a spreadsheet\'s "CSV UTF-8", or iconv -f latin1 -t utf-8 {path.name})'
        ) from None


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return {str: "text", list: "a list", dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _normalised(row: dict[str, Any]) -> dict[str, Any]:
    """Keys stripped and lower-cased ("Video " is video); two keys that read alike are a _Bad."""
    out, given = {}, {}
    for key, value in row.items():
        name = key.strip().lower()
        if name in given:
            raise _Bad(f"fields {given[name]!r} and {key!r} both read as {name!r}; keep one", "duplicate field")
        given[name], out[name] = key, value
    return out


def _jsonl(path: Path, text: str) -> list[tuple[int, dict[str, Any] | _Unreadable]]:
    rows: list[tuple[int, dict[str, Any] | _Unreadable]] = []
    # "\n" only: str.splitlines also ends lines at U+2028, U+2029, \x0b, \x1c... which JSON strings may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.lstrip("\ufeff")  # files joined with cat keep each one's byte-order mark
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if not rows:
                _refuse_one_document(path, text)
            rows.append((number, _Unreadable(f"not JSON: {err.msg} at column {err.colno}", "not JSON")))
            continue
        except RecursionError:
            rows.append((number, _Unreadable("JSON nested too deeply to read", "not JSON")))
            continue
        if not isinstance(row, dict):
            reason = f"{_kind_of(row)} where a JSON object belongs: one sample a line"
            rows.append((number, _Unreadable(reason, "not an object")))
            continue
        rows.append((number, row))
    return rows


def _refuse_one_document(path: Path, text: str) -> None:
    """A pretty-printed .json file (one array over many lines) would give a reject a line: say what it is."""
    try:
        whole = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return
    if isinstance(whole, list | dict):
        fix = "jq -c '.[]'" if isinstance(whole, list) else "jq -c ."
        raise ValueError(
            f"{path}: one JSON document over {text.count(chr(10)) + 1} lines, not JSON Lines; "
            f"write one sample object a line ({fix} {path.name} > manifest.jsonl)"
        )


def _table(path: Path, text: str, delimiter: str) -> tuple[list[str], list[tuple[int, dict[str, Any] | _Unreadable]]]:
    """The header's column names and the rows of a CSV/TSV, each at the line it starts on."""
    # newline="": the csv module, not line splitting, decides where a row ends (quoted values hold newlines).
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, Any] | _Unreadable]] = []
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise ValueError(f"{path}:{start}: unreadable row: {err}") from None
        if not any(value.strip() for value in fields):
            continue  # a blank line, or a spreadsheet's empty row
        if header is None:
            header = [name.strip().lower() for name in fields]
            named = [name for name in header if name]
            doubled = sorted({name for name in named if named.count(name) > 1})
            if doubled:
                raise ValueError(f"{path}:{start}: columns {', '.join(doubled)} appear twice in the header; keep one")
            continue
        extra = fields[len(header) :]
        if any(value.strip() for value in extra):
            reason = (
                f"{len(fields)} values where the header has {len(header)} columns; "
                f"a value holding {delimiter!r} must be in double quotes"
            )
            rows.append((start, _Unreadable(reason, "too many values")))
            continue
        rows.append((start, {name: value for name, value in zip(header, fields, strict=False) if name}))
    return header or [], rows


def _rows(path: Path) -> tuple[list[str] | None, list[tuple[int, dict[str, Any] | _Unreadable]]]:
    """(the CSV/TSV header, or None for JSON Lines; every non-blank line, numbered from 1)."""
    text = _decode(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _table(path, text, "," if suffix == ".csv" else "\t")
    return None, _jsonl(path, text)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if _blank(value):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _Bad(f"{key} is {_kind_of(value)} ({json.dumps(value)[:60]}); it must be text", "wrong type")


def _tags(value: Any) -> list[str]:
    if _blank(value):
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.replace(";", ",").split(",") if t.strip()]
    if isinstance(value, list):
        odd = [t for t in value if isinstance(t, bool) or not isinstance(t, str | int | float)]
        if not odd:
            return [str(t).strip() for t in value if str(t).strip()]
    shown = json.dumps(value)[:60]
    raise _Bad(f'tags is {_kind_of(value)} ({shown}); give a list of texts or one string "a,b;c"', "wrong type")


def _video(base: Path, value: Any) -> str:
    """The video as a URL or an absolute path; a _Bad for a directory or a symlink loop."""
    if not isinstance(value, str):
        shown = json.dumps(value)[:60]
        raise _Bad(f"video is {_kind_of(value)} ({shown}); it must be a path or URL string", "wrong type")
    video = value.strip()
    if is_url(video):
        return video
    if "\0" in video:
        raise _Bad(f"video {video!r} holds a NUL character", "bad path")
    target = base / video
    try:
        resolved = target.resolve()
    except RuntimeError:  # Python < 3.13 raises this for a loop even with strict=False
        raise _Bad(f"{target}: a symlink loop (a link that leads back to itself)", "symlink loop") from None
    try:
        mode = os.stat(resolved).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:  # Python 3.13's resolve leaves a loop in place: stat finds it
            raise _Bad(f"{target}: a symlink loop (a link that leads back to itself)", "symlink loop") from None
        return str(resolved)  # missing or unreadable: whoever opens the video reports it
    if stat.S_ISDIR(mode):
        raise _Bad(f"{resolved}: a directory, not a video file", "directory")
    return str(resolved)


def _sample(base: Path, line: int, row: dict[str, Any], answers: bool) -> Sample:
    if _blank(row.get("answer")) and "caption" in row:
        row["answer"] = row.pop("caption")
    required = REQUIRED if answers else REQUIRED[:2]
    missing = [key for key in required if _blank(row.get(key))]
    if missing:
        raise _Bad(f"missing {', '.join(missing)}; every line needs {', '.join(required)}", "missing fields")
    text = {key: _text(row, key) for key in TEXT_FIELDS}
    return Sample(line=line, video=_video(base, row["video"]), tags=_tags(row.get("tags")), id=str(line), **text)


def manifest_entries(path: str | Path, answers: bool = True) -> tuple[list[Sample], list[Reject]]:
    """The usable samples of a manifest (video paths made absolute) and the lines that are not.

    With answers=False (questions to predict) a line may leave out its answer: it is then "".
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such manifest")
    header, rows = _rows(path)
    if not rows:
        raise ValueError(
            f"{path}: no samples (the file is empty, a header only, or blank lines); "
            "a manifest has one sample a line: video, question, answer"
        )
    if header is not None:
        needed = [key for key in (REQUIRED if answers else REQUIRED[:2]) if key not in header]
        if needed == ["answer"] and "caption" in header:
            needed = []
        if needed:
            raise ValueError(
                f"{path}:1: the header has no {', '.join(needed)} column (it has {', '.join(filter(None, header))}); "
                f"name the columns {', '.join(REQUIRED)} (or caption for answer)"
            )
    samples, rejects, first_line_of = [], [], {}
    for line, row in rows:
        if isinstance(row, _Unreadable):
            rejects.append(Reject(line, "", row.reason, row.kind))
            continue
        ident, shown = "", ""
        try:
            row = _normalised(row)
            shown = row["video"].strip() if isinstance(row.get("video"), str) else ""
            ident = _text(row, "id").strip()
            sample = _sample(path.parent, line, row, answers)
        except _Bad as bad:
            rejects.append(Reject(line, shown, bad.reason, bad.kind, ident))
            continue
        if ident:
            first = first_line_of.setdefault(ident, line)
            if first != line:
                reason = f"id {ident!r} is line {first}'s already; ids must be unique (predictions are keyed by them)"
                rejects.append(Reject(line, sample.video, reason, "duplicate id", ident))
                continue
            sample.id = ident
        samples.append(sample)
    return samples, rejects


def local_videos(path: str | Path, samples: list[Sample], rejects: list[Reject]) -> list[Path]:
    """The local video files manifest `path` names, its rejected lines' too: what an output folder must not hold.

    A rejected line's video is as written (relative to the manifest), a sample's is absolute already.
    """
    videos = [s.video for s in samples] + [r.video for r in rejects if r.video]
    return [Path(path).parent / video for video in videos if not is_url(video)]


def read_manifest(path: str | Path, answers: bool = True) -> list[Sample]:
    """Every sample of a manifest; a ValueError names the first bad line (and its id) and why."""
    samples, rejects = manifest_entries(path, answers)
    if rejects:
        first = rejects[0]
        ident = f" (id {first.id})" if first.id else ""
        raise ValueError(f"{path}:{first.line}{ident}: {first.reason}")
    return samples
