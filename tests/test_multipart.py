"""keygate.multipart: the named fields of a multipart/form-data body, read strictly (RFC 7578
Content-Disposition rules, one part per wanted name, nothing after the closing boundary) and in
linear time, on bodies as the official clients encode them and as an attacker would."""

from __future__ import annotations

import time

import httpx
import pytest

from keygate.multipart import MAX_PARTS, MAX_VALUE, FieldScanner, FormError, boundary_of, parse_fields

CTYPE = "multipart/form-data; boundary=b"


def part(disposition: str, value: bytes = b"x", *headers: str) -> bytes:
    lines = [f"Content-Disposition: {disposition}", *headers]
    return b"--b\r\n" + "".join(f"{h}\r\n" for h in lines).encode() + b"\r\n" + value + b"\r\n"


def form(*parts: bytes, end: bytes = b"--b--\r\n") -> bytes:
    return b"".join(parts) + end


def fields(body: bytes, ctype: str = CTYPE) -> dict[str, str]:
    return parse_fields(body, ctype)


def refused(body: bytes, ctype: str = CTYPE) -> str:
    with pytest.raises(FormError) as exc:
        parse_fields(body, ctype)
    return exc.value.message


FILE = part(
    'form-data; name="file"; filename="a.mp3"', b"ID3\x00\r\n--not-the-boundary", "Content-Type: audio/mpeg"
)


def test_a_body_as_httpx_and_the_openai_sdk_encode_it() -> None:
    """The SDK sends its fields first (model before file), each name quoted."""
    request = httpx.Request(
        "POST",
        "http://x/v1/audio/transcriptions",
        data={"model": "whisper-1", "language": "en"},
        files={"file": ("speech.mp3", b"ID3" + bytes(range(256)) * 40, "audio/mpeg")},
    )
    body = request.read()
    assert body.index(b'name="model"') < body.index(b'name="file"')
    assert parse_fields(body, request.headers["content-type"]) == {"model": "whisper-1"}
    assert parse_fields(body, request.headers["content-type"], ("model", "language")) == {
        "model": "whisper-1",
        "language": "en",
    }


@pytest.mark.parametrize(
    "disposition",
    [
        'form-data; name="model"',
        "form-data; name=model",  # a token needs no quotes
        'FORM-DATA; NAME="model"',  # type and parameter names in any case
        'form-data;name="model"',
        'form-data ; name = "model" ; x-extra="1"',  # extra parameters, spaces around them
        'form-data; filename="m.txt"; name="model"',  # a file part of that name counts too
    ],
)
def test_the_model_is_found_under_every_reading_of_rfc_7578(disposition: str) -> None:
    for header in ("Content-Disposition", "content-disposition", "CONTENT-DISPOSITION"):
        body = form(part(disposition, b"gpt-4o-mini").replace(b"Content-Disposition", header.encode()), FILE)
        assert fields(body) == {"model": "gpt-4o-mini"}


def test_the_model_may_come_after_the_file() -> None:
    assert fields(form(FILE, part('form-data; name="model"', b"whisper-1"))) == {"model": "whisper-1"}
    assert fields(form(FILE)) == {}  # none: the caller decides
    assert fields(b"--b--\r\n") == {} and fields(b"--b--") == {}  # no part at all


def test_text_that_merely_looks_like_a_model_part_is_not_one() -> None:
    """Inside a file, a later field, or a filename: today's regex scan took these for the model."""
    inside = part('form-data; name="file"; filename="a"', b'name="model"\r\n\r\ngpt-4o\r\n')
    assert fields(form(part("form-data; name=model", b"whisper-1"), inside)) == {"model": "whisper-1"}
    prompt = part('form-data; name="prompt"', b"gpt-4o-mini")
    assert fields(form(part('form-data; name="model"', b"whisper-1"), prompt)) == {"model": "whisper-1"}
    named = part('form-data; name="file"; filename="name=model"', b"gpt-4o")
    assert fields(form(named)) == {}


@pytest.mark.parametrize(
    "second",
    [
        'form-data; name="model"',
        "form-data; name=model",
        'form-data; name="model"; filename="m"',
    ],
)
def test_a_second_model_part_is_refused(second: str) -> None:
    body = form(part('form-data; name="model"', b"whisper-1"), FILE, part(second, b"gpt-4o"))
    assert refused(body) == "The multipart body gives 'model' twice."


@pytest.mark.parametrize("name", ['"MODEL"', "Model", '" model"', '"model "'])
def test_a_model_part_under_another_spelling_is_refused(name: str) -> None:
    with pytest.raises(FormError) as exc:
        fields(form(part(f"form-data; name={name}", b"gpt-4o"), FILE))
    assert exc.value.param == "model" and "another way" in exc.value.message


@pytest.mark.parametrize(
    ("disposition", "message"),
    [
        ('form-data; name="model"; name="file"', "gives 'name' twice"),
        ("form-data; name*=UTF-8''model", ""),  # the parser finds no name (RFC 7578 §4.2)
        ('form-data; name="mo\\del"', "cannot read unambiguously"),
        ('form-data; name="mod%65l"', "cannot read unambiguously"),
        ('attachment; name="model"', "Wrong type"),
        ('form-data; name="model', "Missing name"),  # an open quote
        ("form-data; name", "Missing name"),
        ('form-data; filename="a"', "Missing name"),
        ('form-data; name="model"; filename="a;b', "invalid Content-Disposition header"),
        ('form-data; name="file"; filename*=x; name="model"', "extended parameter"),
    ],
)
def test_dispositions_two_parsers_could_read_differently_are_refused(disposition: str, message: str) -> None:
    assert message in refused(form(part(disposition, b"gpt-4o")))


def test_a_part_with_two_dispositions_is_refused() -> None:
    body = form(part('form-data; name="file"', b"gpt-4o", 'Content-Disposition: form-data; name="model"'))
    assert "more than one Content-Disposition" in refused(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (form(FILE, end=b"--b--\r\njunk"), "does not end with its closing boundary"),
        (form(FILE, end=b""), "does not end with its closing boundary"),  # cut short
        (form(FILE, end=b"--b--\r\n") + form(part("form-data; name=model", b"gpt-4o")), "after end"),
        (FILE[:-2] + b"--b--", "malformed"),  # no CRLF before the closing boundary
        (b"--b\r\nContent-Disposition form-data\r\n\r\nx\r\n--b--", "malformed"),
        (b"--b\r\n\r\nx\r\n--b--", "malformed"),  # a part without headers
        (b"--b\nContent-Disposition: form-data; name=a\n\nx\n--b--", "malformed"),  # bare LF
        (b"", "does not end"),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, message: str) -> None:
    assert message in refused(body)


def test_limits_on_parts_and_values() -> None:
    many = form(*[part("form-data; name=x")] * MAX_PARTS)
    assert fields(many) == {}
    assert "malformed" in refused(form(*[part("form-data; name=x")] * (MAX_PARTS + 1)))
    assert fields(form(part("form-data; name=model", b"m" * MAX_VALUE))) == {"model": "m" * MAX_VALUE}
    assert "too long" in refused(form(part("form-data; name=model", b"m" * (MAX_VALUE + 1))))
    assert "not UTF-8" in refused(form(part("form-data; name=model", b"\xff")))


@pytest.mark.parametrize(
    ("ctype", "boundary"),
    [
        ("multipart/form-data; boundary=b", b"b"),
        ('multipart/form-data; boundary="a b:c"', b"a b:c"),
        ("Multipart/Form-Data; charset=utf-8; BOUNDARY=xyz", b"xyz"),
    ],
)
def test_the_boundary_comes_from_the_content_type(ctype: str, boundary: bytes) -> None:
    assert boundary_of(ctype) == boundary


@pytest.mark.parametrize(
    "ctype",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        'multipart/form-data; boundary=""',
        "multipart/form-data; boundary=a; boundary=b",  # which one? refused
        'multipart/form-data; boundary="ends with space "',
        "multipart/form-data; boundary=" + "x" * 71,
        'multipart/form-data; boundary="a\\"b"',
        "multipart/form-datax; boundary=b",
        "multipart/mixed; boundary=b",
    ],
)
def test_a_missing_or_invalid_boundary_is_refused(ctype: str) -> None:
    with pytest.raises(FormError):
        boundary_of(ctype)


def test_any_chunking_gives_the_same_answer() -> None:
    body = form(part("form-data; name=model", b"whisper-1"), FILE)
    late = form(part("form-data; name=model", b"whisper-1"), FILE, end=b"--b--\r\n") + b"--b--"
    for size in (1, 2, 3, 7, 64, len(body)):
        scanner = FieldScanner(b"b", ("model",), len(body))
        for start in range(0, len(body), size):
            scanner.feed(body[start : start + size])
        assert scanner.close() == {"model": "whisper-1"}
        bad = FieldScanner(b"b", ("model",), len(late))
        with pytest.raises(FormError):
            for start in range(0, len(late), size):
                bad.feed(late[start : start + size])
            bad.close()


def _adversarial(size: int) -> bytes:
    """A body of many model parts (today's regex scan took quadratic time on repeated
    ``name="model"`` lines), and one whose file is all near-boundaries."""
    unit = b'name="model"\r\n\r\n--'
    return form(
        part("form-data; name=model", b"whisper-1"), part("form-data; name=file", unit * (size // len(unit)))
    )


def test_parse_time_is_linear_in_the_body() -> None:
    """Measured: 1 MiB of near-boundaries in about 5 ms, 25 MiB in about 100 ms (so the body
    guard parses large bodies in steps, yielding between them)."""
    timings = {}
    for size in (1 << 20, 8 << 20):
        body = _adversarial(size)
        started = time.perf_counter()
        assert fields(body) == {"model": "whisper-1"}
        timings[size] = time.perf_counter() - started
    assert timings[8 << 20] < 1.0
    assert timings[8 << 20] < 8 * 4 * timings[1 << 20] + 0.05  # linear (with room for noise)
    many = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nx\r\n' * 20_000 + b"--b--\r\n"
    started = time.perf_counter()
    assert "twice" in refused(many)  # refused at the second part, not after scanning them all
    assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize("value", [b"gpt-4o\nx", b"gpt-4o\rx", b"gpt\x00", b"gpt\x1b[31m", b"gpt\xc2\x85"])
def test_a_model_with_a_control_character_is_refused(value: bytes) -> None:
    # A parser that ends a part at a bare LF would read another model than keygate checked.
    assert "control character" in refused(form(part('form-data; name="model"', value)))


@pytest.mark.parametrize("junk", [b"\rX-Other: y", b"X-Other: y\rz", b"X-Other: y\nz"])
def test_a_bare_cr_or_lf_in_a_part_header_is_refused(junk: bytes) -> None:
    # Found by the fuzzer (tests/fuzz/corpus/multipart/crash-bare-cr-in-part-headers): the library
    # strips a bare CR from a header name, where another parser ends the headers there.
    body = form(part('form-data; name="model"', b"whisper-1", junk.decode("latin-1")))
    assert "malformed header line" in refused(body)
    assert fields(form(part('form-data; name="model"', b"whisper-1", "X-Other: y"))) == {"model": "whisper-1"}


def _scan_raw(body: bytes, limit: int = 1 << 20) -> tuple[dict[str, str], bytes | None]:
    scanner = FieldScanner(b"b", ("purpose",), len(body), "file", limit)
    for n in range(0, len(body), 7):  # (in small pieces: the raw part spans many)
        scanner.feed(body[n : n + 7])
    return scanner.close(), scanner.raw_value


def test_a_raw_part_is_kept_as_sent_up_to_its_bound() -> None:
    body = form(part('form-data; name="purpose"', b"batch"), FILE)
    got, raw = _scan_raw(body)
    assert got == {"purpose": "batch"} and raw == b"ID3\x00\r\n--not-the-boundary"
    assert _scan_raw(body, limit=4)[1] is None  # longer than the bound: not kept at all


@pytest.mark.parametrize("name", ["file", "FILE", " file"])
def test_a_second_raw_part_or_one_named_like_it_is_refused(name: str) -> None:
    body = form(FILE, part(f'form-data; name="{name}"', b"other"))
    with pytest.raises(FormError):
        _scan_raw(body)
