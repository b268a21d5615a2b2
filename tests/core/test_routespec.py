"""The routespec policy: what routes exactly is accepted, everything else refused with a reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jupyterhub.utils import url_escape_path, url_path_join

from eventproxy import InvalidRoutespecError, parse_routespec, validate_routespec

ACCEPTED = {
    "/": "/",
    "/user/alice": "/user/alice/",
    "/user/alice/": "/user/alice/",
    "/user/walnut/%24p~c%7Ca%21%20ch@rs/": "/user/walnut/%24p~c%7Ca%21%20ch@rs/",
    "/user/x/%23%3F/": "/user/x/%23%3F/",
    "/user/%C3%A9l%C3%A8ve/": "/user/%C3%A9l%C3%A8ve/",
    "/user/élève/": "/user/élève/",
    "/user/a@b.c~d/": "/user/a@b.c~d/",
    "/user/it's(1)+2;x=y,z*!$&/": "/user/it's(1)+2;x=y,z*!$&/",
    "alice.example.com/user/alice/": "alice.example.com/user/alice/",
    "Alice.Example.COM/": "Alice.Example.COM/",
    "/user/a.b/..c/.d./": "/user/a.b/..c/.d./",
    # Empty segments (not the last): JupyterHub's own extra routes under host routing.
    "example.com//has%20space/foo/": "example.com//has%20space/foo/",
    "example.com//missing-trailing/slash": "example.com//missing-trailing/slash/",
    "/user//x/": "/user//x/",
    "//x": "//x/",
}

REJECTED = {
    "": "empty",
    "user/alice/": "invalid label",  # no host-looking part... 'user' is a valid label, see below
    "/user/../hub/": "dot segment",
    "/user/./x/": "dot segment",
    "/user/%2e%2E/hub/": "dot segment",
    "/user/%2E/": "dot segment",
    "/user/%2F/": "encoded slash",
    "/user/a%2fb/": "encoded slash",
    "/user/a%5Cb/": "encoded backslash",
    "/user//": "empty last path segment",
    "/user/a//": "empty last path segment",
    "//": "empty last path segment",
    "example.com//": "empty last path segment",
    "example.com/a//": "empty last path segment",
    "/user/a?b/": "raw '?'",
    "/user/a#b/": "raw '#'",
    "/user/a\r\nX-Evil: 1/": "control character",
    "/user/a\x00/": "control character",
    "/user/a\t/": "control character",
    "/user/a%0D%0A/": "control character",
    "/user/a%00/": "control character",
    "/user/a%7F/": "control character",
    "/user/a%C2%85/": "control character",  # NEL, a C1 control
    "/user/x`) || PathPrefix(`/hub/": "backtick",
    '/user/x") || PathPrefix("/hub/': "double quote",
    "/user/x||y/": "'|'",
    "/user/{x}/": "brace",
    "/user/a b/": "space",
    "/user/a\\b/": "backslash",
    "/user/a%zz/": "malformed percent-escape",
    "/user/a%4/": "malformed percent-escape",
    "/user/%ff/": "does not decode to UTF-8",
    "host:8000/x/": "port",
    "user@host/x/": "userinfo",
    "-bad.example.com/": "invalid label",
    "a..b/": "invalid label",
    "x`y/": "backtick",
}


@pytest.mark.parametrize(("spec", "normalised"), ACCEPTED.items())
def test_accepted(spec: str, normalised: str) -> None:
    assert validate_routespec(spec) == normalised


@pytest.mark.parametrize(("spec", "reason"), REJECTED.items())
def test_rejected_with_reason(spec: str, reason: str) -> None:
    if spec == "user/alice/":
        # A bare word before the first slash is a (single-label) host: valid in host routing,
        # refused when host routing is off, as JupyterHub does.
        with pytest.raises(InvalidRoutespecError, match="host routing is disabled"):
            validate_routespec(spec, host_routing=False)
        return
    with pytest.raises(InvalidRoutespecError, match=reason.replace("(", r"\(").replace("?", r"\?")):
        validate_routespec(spec)


def test_errors_are_value_errors_naming_the_spec() -> None:
    with pytest.raises(ValueError, match=r"'/user/\.\./hub/'"):
        validate_routespec("/user/../hub/")


def test_routing_mode_is_enforced() -> None:
    assert validate_routespec("/user/a", host_routing=False) == "/user/a/"
    assert validate_routespec("h.example.org/user/a", host_routing=True) == "h.example.org/user/a/"
    with pytest.raises(InvalidRoutespecError, match="host routing is enabled"):
        validate_routespec("/user/a/", host_routing=True)
    with pytest.raises(InvalidRoutespecError, match="host routing is disabled"):
        validate_routespec("h.example.org/user/a/", host_routing=False)


def test_non_string_refused() -> None:
    with pytest.raises(InvalidRoutespecError, match="must be a str"):
        validate_routespec(b"/user/a/")


def test_decoded_path_is_what_requests_match() -> None:
    spec = parse_routespec("/user/walnut/%24p~c%7Ca%21%20ch@rs/")
    assert spec.decoded_path == "/user/walnut/$p~c|a! ch@rs/"
    assert parse_routespec("/user/%C3%A9/").decoded_path == "/user/é/"
    assert parse_routespec("/user/x/%23%3F").decoded_path == "/user/x/#?/"
    host = parse_routespec("Alice.Example.com/a")
    assert (host.host, host.match_host, host.path) == (
        "Alice.Example.com",
        "alice.example.com",
        "/a/",
    )


# Every name JupyterHub can produce must be routable: its own escaping of any unicode text.
names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)


@given(user=names, server=names)
def test_everything_jupyterhub_escapes_is_accepted(user: str, server: str) -> None:
    path = url_path_join("/user", url_escape_path(user), url_escape_path(server)) + "/"
    decoded_user = user
    try:
        spec = parse_routespec(path)
    except InvalidRoutespecError as exc:
        # The only refusals allowed: names that are dot segments, contain a slash, a backslash
        # or a control character once decoded. JupyterHub never produces those for usernames,
        # but the policy must refuse them for any caller.
        assert any(
            n in (".", "..")
            or "/" in n
            or "\\" in n
            or any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in n)
            for n in (decoded_user, server)
        ), exc
    else:
        assert spec.decoded_path == f"/user/{user}/{server}/"


@given(st.text(max_size=40))
def test_validation_never_crashes_and_is_idempotent(text: str) -> None:
    try:
        once = validate_routespec(text)
    except InvalidRoutespecError:
        return
    assert validate_routespec(once) == once
    assert once.endswith("/")
    for bad in ("`", '"', "|", "{", "}", "\r", "\n", "\x00", " ", "?", "#"):
        assert bad not in once
