"""Manifest parsing over a corpus of bad files: exact rows and columns reported, good rows kept."""

import pytest

from t2v_fast.bulk.manifest import parse_manifest, stable_id
from t2v_fast.core.params import ParamRequest
from t2v_fast.errors import UserError
from t2v_fast.loading import describe_model


@pytest.fixture(scope="module")
def spec():
    return describe_model("tiny-random")


def parse(spec, tmp_path, text: str, encoding="utf-8", **defaults):
    path = tmp_path / "manifest.csv"
    path.write_bytes(text.encode(encoding))
    return parse_manifest(path, ParamRequest.of(**defaults), spec)


def reported(manifest):
    return [(p.row, p.column) for p in manifest.problems]


def test_good_manifest_with_bom_crlf_and_quoted_fields(spec, tmp_path):
    text = '\ufeffid,prompt,seed,steps\r\na,"a cat, sitting",5,10\r\nb,"two\r\nlines",,\r\n'
    manifest = parse(spec, tmp_path, text)
    assert manifest.problems == []
    a, b = manifest.rows
    assert (a.id, a.prompt, a.seed, a.settings.steps, a.settings.t0, a.settings.t1) == (
        "a",
        "a cat, sitting",
        5,
        10,
        8,
        9,
    )
    assert (b.id, b.prompt, b.seed, b.settings.steps) == (
        "b",
        "two\nlines",
        1,
        50,
    )  # line ends normalised; row 3: base seed + 1


CORPUS = {
    "unknown column": ("prompt,stepz\na,\nb,10\n", [(3, "stepz")], ["a"]),
    "missing prompt": ("id,prompt\nx,\ny,a dog\n", [(2, "prompt")], ["a dog"]),
    "non-numeric": ("prompt,steps,guidance\na,one,7\nb,10,abc\nc,10,7.5\n", [(2, "steps"), (3, "guidance")], ["c"]),
    "out of range": (
        "prompt,frames,height,steps,guidance,fps,seed\n"
        "a,0,,,,,\nb,,44,,,,\nc,,,1,,,\nd,,,,-1,,\ne,,,,,0,\nf,,,,,,-3\ng,4,32,10,2,8,1\n",
        [(2, "frames"), (3, "height"), (4, "steps"), (5, "guidance"), (6, "fps"), (7, "seed")],
        ["g"],
    ),
    "several problems in one row": (
        "prompt,frames,width\n,0,33\nok,,\n",
        [(2, "prompt"), (2, "frames"), (2, "width")],
        ["ok"],
    ),
    "duplicate id": ("id,prompt\nv1,a\nv2,b\nv1,c\n", [(4, "id")], ["a", "b"]),
    "invalid id": ("id,prompt\n../etc,a\nfine,b\n", [(2, "id")], ["b"]),
    "invalid t0/t1": ("prompt,steps,t0,t1\na,10,9,5\nb,10,12,\nc,10,3,7\n", [(2, "t0"), (3, "t0")], ["c"]),
    "extra fields": ("prompt,seed\na,1,oops\nb,2\n", [(2, "#3")], ["b"]),
    "seed above 2**63-1": (f"prompt,seed\na,{2**63}\nb,{2**63 - 1}\n", [(2, "seed")], ["b"]),
    "blank prompt, negative prompt kept": ("prompt,negative_prompt\n   ,dark\nok,dark\n", [(2, "prompt")], ["ok"]),
}


@pytest.mark.parametrize(("text", "problems", "kept"), CORPUS.values(), ids=CORPUS.keys())
def test_bad_rows_are_reported_and_good_rows_survive(spec, tmp_path, text, problems, kept):
    manifest = parse(spec, tmp_path, text)
    assert reported(manifest) == problems
    assert [row.prompt for row in manifest.rows] == kept
    assert sorted(manifest.rejected) == sorted({row for row, _ in problems})


@pytest.mark.parametrize(
    ("text", "encoding", "message"),
    [
        ("", "utf-8", "is empty"),
        ("\n\n", "utf-8", "is empty"),
        ("id,prompt\n", "utf-8", "header but no prompt rows"),
        ("id,text\n1,a cat\n", "utf-8", "no 'prompt' column"),
        ("prompt\ncaf\xe9\n", "latin-1", "is not UTF-8"),
        ('prompt\n"unterminated\n', "utf-8", "not valid CSV"),
    ],
    ids=["empty", "blank lines", "header only", "no prompt column", "latin-1", "broken quoting"],
)
def test_file_level_problems_reject_the_file(spec, tmp_path, text, encoding, message):
    with pytest.raises(UserError, match=message):
        parse(spec, tmp_path, text, encoding=encoding)


def test_long_prompt_is_accepted_with_a_warning(spec, tmp_path):
    manifest = parse(spec, tmp_path, f"prompt\n{'a very long prompt ' * 10}\nshort\n")
    assert len(manifest.rows) == 2
    assert [(w.row, w.column) for w in manifest.warnings] == [(2, "prompt")]
    assert "77 CLIP tokens" in str(manifest.warnings[0])


def test_ids_without_id_column_are_stable_and_content_based(spec, tmp_path):
    first = parse(spec, tmp_path, "prompt,seed\na cat,1\na dog,2\n")
    again = parse(spec, tmp_path, "prompt,seed\na dog,2\na cat,1\n")
    assert {r.prompt: r.id for r in first.rows} == {r.prompt: r.id for r in again.rows}
    assert first.rows[0].id != first.rows[1].id
    assert stable_id({"prompt": "x", "seed": "1"}) == stable_id({"seed": "1 ", "prompt": " x"})


def test_invalid_defaults_reject_the_file_naming_the_default(spec, tmp_path):
    with pytest.raises(UserError, match=r"invalid defaults .*height must be a multiple of 8, got 44"):
        parse(spec, tmp_path, "prompt\na\n", height=44)


def test_flow_defaults_apply_where_rows_are_silent(spec, tmp_path):
    manifest = parse(spec, tmp_path, "prompt,frames\na,\nb,3\n", frames=5, steps=12)
    assert [(r.settings.frames, r.settings.steps) for r in manifest.rows] == [(5, 12), (3, 12)]
