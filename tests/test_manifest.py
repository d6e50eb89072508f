"""Reading manifests as people really write them: spreadsheets' CSVs, hand-edited JSONL, broken lines."""

from __future__ import annotations

import json

import pytest

from vtt.cli import main
from vtt.data.datasets import Reject
from vtt.data.manifest import manifest_entries, read_manifest

GOOD = {"video": "a.mp4", "question": "what?", "answer": "a cat"}


def jsonl(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


@pytest.mark.parametrize(
    "name, text",
    [("m.jsonl", ""), ("m.csv", "video,question,answer\r\n"), ("m.jsonl", "\n  \n\n"), ("m.tsv", "\ufeff\n")],
)
def test_manifest_without_samples_is_an_error_naming_the_file(tmp_path, name, text):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{name}: no samples"):
        manifest_entries(tmp_path / name)


def test_prepare_stops_on_an_empty_manifest_without_writing_a_folder(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("video,question,answer\n")
    out = tmp_path / "prepared"
    assert main(["prepare", "--manifest", str(tmp_path / "m.csv"), "--out", str(out), "--trainer", "seq2seq"]) == 2
    assert "m.csv: no samples" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".prepared*"))


def test_spreadsheet_csv_with_bom_upper_case_suffix_crlf_and_quoted_newlines(tmp_path):
    # As Excel's "CSV UTF-8" writes it: a byte-order mark, CRLF, a cell holding a line break, a padded header.
    (tmp_path / "clips").mkdir()
    body = (
        "\ufeffVideo ,Question,ANSWER,tags\r\n"
        'clips/a.mp4,"what happens\r\nnext?","a cat, then a dog",pets;cats\r\n'
        ",,,\r\n"
        "clips/b.mp4,who?,nobody,\r\n"
    )
    (tmp_path / "M.CSV").write_bytes(body.encode("utf-8"))
    first, second = read_manifest(tmp_path / "M.CSV")
    assert first.video == str(tmp_path / "clips" / "a.mp4")
    assert first.question == "what happens\r\nnext?" and first.answer == "a cat, then a dog"
    assert first.tags == ["pets", "cats"] and (first.line, second.line) == (2, 5)
    assert second.answer == "nobody" and second.tags == []


def test_tsv_is_read_with_tabs(tmp_path):
    (tmp_path / "m.tsv").write_text("video\tquestion\tcaption\na.mp4\twhat, really?\ta cat\n")
    [sample] = read_manifest(tmp_path / "m.tsv")
    assert (sample.question, sample.answer) == ("what, really?", "a cat")


def test_csv_header_without_a_required_column_lists_its_columns(tmp_path):
    (tmp_path / "m.csv").write_text("path,prompt,answer\na.mp4,q,a\n")
    with pytest.raises(ValueError, match=r"m.csv:1: the header has no video, question column \(it has path, prompt"):
        manifest_entries(tmp_path / "m.csv")


def test_csv_row_with_more_values_than_columns_is_a_reject(tmp_path):
    (tmp_path / "m.csv").write_text("video,question,answer\na.mp4,q,a\nb.mp4,q,a cat, then a dog\n")
    [_], [reject] = manifest_entries(tmp_path / "m.csv")
    assert reject.line == 3 and reject.reason.startswith("4 values where the header has 3 columns")


def test_jsonl_with_bom_crlf_blank_lines_and_line_separators_in_values(tmp_path):
    answer = "first\u2028second\u2029third\x0bfourth"  # str.splitlines ends lines at all three
    text = "\ufeff" + jsonl(GOOD, "", {**GOOD, "answer": answer}).replace("\n", "\r\n")
    (tmp_path / "m.jsonl").write_bytes(text.encode("utf-8"))
    first, second = read_manifest(tmp_path / "m.jsonl")
    assert first.video == str(tmp_path / "a.mp4")
    assert second.answer == answer and second.line == 3


def test_latin1_manifest_is_an_error_naming_line_byte_and_fix(tmp_path):
    text = "video,question,answer\na.mp4,q,a\nb.mp4,où?,café\n"
    (tmp_path / "m.csv").write_bytes(text.encode("latin-1"))
    offset = text.index("ù")
    with pytest.raises(ValueError, match=rf"m.csv:3: not UTF-8: byte {offset} is 0xf9; save the manifest as UTF-8"):
        manifest_entries(tmp_path / "m.csv")


def test_malformed_lines_are_rejects_with_reasons(tmp_path):
    lines = [
        GOOD,  # 1
        "5",  # 2
        "null",  # 3
        '["a.mp4", "q", "a"]',  # 4
        '"a.mp4"',  # 5
        {**GOOD, "video": 5},  # 6
        {**GOOD, "tags": {"a": 1}},  # 7
        {**GOOD, "question": 7, "answer": 0, "title": 1.5, "tags": ["x", 2]},  # 8: numbers become text
        "[" * 100_000 + "]" * 100_000,  # 9
        '{"video": "a.mp4", "question": "q", "answer": "a",}',  # 10
        {**GOOD, "answer": ["a", "b"]},  # 11
        {**GOOD, "question": "   "},  # 12
        {**GOOD, "Video": "b.mp4"},  # 13
    ]
    (tmp_path / "m.jsonl").write_text(jsonl(*lines))
    samples, rejects = manifest_entries(tmp_path / "m.jsonl")
    assert [s.line for s in samples] == [1, 8]
    assert (samples[1].question, samples[1].answer, samples[1].title, samples[1].tags) == ("7", "0", "1.5", ["x", "2"])
    reasons = {r.line: r.reason for r in rejects}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13]
    assert reasons[2].startswith("a number where a JSON object belongs")
    assert reasons[3].startswith("null where") and reasons[4].startswith("a list where")
    assert reasons[5].startswith("text where")
    assert reasons[6] == "video is a number (5); it must be a path or URL string"
    assert reasons[7].startswith('tags is an object ({"a": 1})')
    assert reasons[9] == "JSON nested too deeply to read"
    assert reasons[10].startswith("not JSON: Expecting property name enclosed in double quotes at column")
    assert reasons[11].startswith("answer is a list")
    assert reasons[12].startswith("missing question")
    assert reasons[13] == "fields 'video' and 'Video' both read as 'video'; keep one"
    with pytest.raises(ValueError, match=r"m.jsonl:2: a number where"):
        read_manifest(tmp_path / "m.jsonl")


def test_pretty_printed_json_array_is_an_error_with_the_fix(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps([GOOD, GOOD], indent=2))
    with pytest.raises(ValueError, match=r"m.json: one JSON document over \d+ lines, not JSON Lines.*jq -c"):
        manifest_entries(tmp_path / "m.json")


def test_video_that_is_a_symlink_loop_or_a_directory_is_a_reject(tmp_path):
    (tmp_path / "loop.mp4").symlink_to(tmp_path / "back.mp4")
    (tmp_path / "back.mp4").symlink_to(tmp_path / "loop.mp4")
    (tmp_path / "clips").mkdir()
    lines = [{**GOOD, "video": "loop.mp4"}, {**GOOD, "video": "clips"}, {**GOOD, "video": " missing.mp4 "}]
    (tmp_path / "m.jsonl").write_text(jsonl(*lines))
    [missing], [loop, folder] = manifest_entries(tmp_path / "m.jsonl")
    assert loop.kind == "symlink loop" and loop.reason.startswith(f"{tmp_path / 'loop.mp4'}: a symlink loop")
    assert folder.kind == "directory" and folder.reason == f"{tmp_path / 'clips'}: a directory, not a video file"
    assert missing.video == str(tmp_path / "missing.mp4")  # a missing file is for whoever opens it


def test_rejects_carry_the_line_id_and_duplicate_ids_name_the_first_line(tmp_path):
    lines = [{**GOOD, "id": "clip-1"}, {"video": "b.mp4", "id": "clip-2"}, {**GOOD, "id": "clip-1"}, {**GOOD}]
    (tmp_path / "m.jsonl").write_text(jsonl(*lines))
    samples, rejects = manifest_entries(tmp_path / "m.jsonl")
    assert [(s.line, s.id) for s in samples] == [(1, "clip-1"), (4, "4")]
    assert [(r.line, r.id, r.kind) for r in rejects] == [(2, "clip-2", "missing fields"), (3, "clip-1", "duplicate id")]
    assert rejects[1].reason.startswith("id 'clip-1' is line 1's already") and rejects[1].where == "line 3 (id clip-1)"
    with pytest.raises(ValueError, match=r"m.jsonl:2 \(id clip-2\): missing question, answer"):
        read_manifest(tmp_path / "m.jsonl")


def test_reject_built_positionally_keeps_its_json_fields():
    assert json.loads(Reject(3, "v.mp4", "cannot open", "cannot open").json()) == {
        "line": 3,
        "video": "v.mp4",
        "reason": "cannot open",
        "kind": "cannot open",
        "id": "",
    }
