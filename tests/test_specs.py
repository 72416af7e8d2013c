"""parse_spec: the one reader of --kv-policy, --decoding and --search strings."""

import pytest

from arvision.errors import ArvisionError
from arvision.specs import Spec, parse_spec

NAMES = {"beam": "beam:W[,expand=E,steps=a/b]", "gsd": "gsd[:G[:W]]", "tts-var": "tts-var[:N][,lam=L]"}
OPTIONS = {"beam": ("expand", "steps"), "tts-var": ("lam",)}


def parse(text: str) -> Spec:
    return parse_spec(text, "search", NAMES, OPTIONS)


def test_positional_args_and_options():
    assert parse("gsd") == Spec("gsd")
    assert parse("gsd:5:8") == Spec("gsd", ("5", "8"))
    assert parse("beam:4,expand=2,steps=2/6") == Spec("beam", ("4",), {"expand": "2", "steps": "2/6"})
    assert parse("tts-var,lam=5") == Spec("tts-var", (), {"lam": "5"})
    assert parse("tts-var:lam=5") == Spec("tts-var", (), {"lam": "5"})  # options may follow ':' too


def test_spelling_is_forgiving():
    assert parse(" BEAM : 4 , Expand = 2 ") == Spec("beam", ("4",), {"expand": "2"})
    assert parse("tts_var").name == "tts-var"
    assert parse("gsd:").args == () and parse("gsd::8").args == ("8",)  # empty items are ignored
    assert parse("beam:4,expand=1,expand=3").options == {"expand": "3"}  # the last one wins
    s = parse("beam:4")
    assert (s.text, s.what, s.usage) == ("beam:4", "search", NAMES["beam"])


def test_typed_helpers():
    s = parse("beam:4,steps=2//6")
    assert s.integer(s.args[0], "beam's width") == 4
    assert s.integers(s.options["steps"], "steps") == (2, 6)
    assert s.integers("", "steps") == ()
    assert s.number("1e-3", "lam") == 0.001
    assert s.number("0.5", "B", "a number with 0 < B <= 1", lambda x: 0 < x <= 1) == 0.5


@pytest.mark.parametrize("call, message", [
    (lambda s: s.integer("two", "beam's width"), "search 'beam:4': beam's width must be an integer, got 'two'"),
    (lambda s: s.integer("1.5", "beam's width"), "beam's width must be an integer, got '1.5'"),
    (lambda s: s.number("x", "lam"), "lam must be a number, got 'x'"),
    (lambda s: s.number("nan", "B", "a number with 0 < B <= 1", lambda x: 0 < x <= 1),
     "B must be a number with 0 < B <= 1, got 'nan'"),
    (lambda s: s.integer("0", "expand", "a positive integer", lambda x: x > 0), "expand must be a positive integer"),
    (lambda s: s.integers("2/x", "steps"), "steps must be integers separated by '/' (e.g. 2/4), got '2/x'"),
    (lambda s: parse("gsd:1:2:3").max_args(2), "cannot read '3': gsd takes at most 2 parameters; use gsd[:G[:W]]"),
    (lambda s: parse("beam:4,2").max_args(1), "cannot read '2': beam takes at most 1 parameter"),
    (lambda s: parse("gsd:1").max_args(0), "cannot read '1': gsd takes no parameters"),
])
def test_helper_errors_name_the_option_the_value_and_what_is_allowed(call, message):
    with pytest.raises(ArvisionError) as err:
        call(parse("beam:4"))
    assert message in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("greedy:3", "unknown search 'greedy' in 'greedy:3'; use beam:W[,expand=E,steps=a/b] | gsd[:G[:W]] | "
                 "tts-var[:N][,lam=L]"),
    ("beam:4,width=3", "unknown option 'width' for beam search in 'beam:4,width=3'; options: expand, steps"),
    ("gsd:1,x=2", "unknown option 'x' for gsd search in 'gsd:1,x=2'; options: none"),
    ("tts-var,lam=5,8", "cannot read '8': positional parameters come before the options"),
    ("", "search must be a spec string (beam:W"),
    ("  ", "search must be a spec string"),
])
def test_parse_errors_say_what_is_allowed(text, message):
    with pytest.raises(ArvisionError) as err:
        parse(text)
    assert message in str(err.value)


def test_non_string_is_refused():
    with pytest.raises(ArvisionError, match="must be a spec string"):
        parse_spec(3, "decoding", {"plain": "plain"})
