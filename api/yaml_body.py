"""Job specs in YAML: ``POST /jobs`` and ``POST /spec/validate`` also take a YAML body
(``Content-Type: application/yaml``), as the examples and README write specs.

``YamlBodies`` turns such a body into the same JSON before anything else reads it, so the routes,
their validation and their error answers are the JSON ones. It sits inside ``BodySizeLimit`` (the
body it buffers is bounded) and outside ``JsonDepthLimit`` (which then checks the JSON's nesting).
YAML aliases are refused: a few of them expand into a huge document (the "billion laughs").
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import read_whole_body, replay_body, validation_response

YAML_MEDIA_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})


class YamlBodyError(ValueError):
    """The body is not a YAML document the API can take."""


def parse_yaml_body(body: bytes) -> Any:
    """The JSON-ready value of a YAML body: UTF-8, one document, no aliases, JSON types only."""
    try:
        text = body.decode("utf-8")
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise YamlBodyError("YAML aliases (*name) are not accepted")
        value = yaml.safe_load(text)
        json.dumps(value, allow_nan=False)
    except UnicodeDecodeError:
        raise YamlBodyError("the YAML body is not UTF-8") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise YamlBodyError(f"malformed YAML{where}: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise YamlBodyError(f"malformed YAML: {error}") from None
    except RecursionError:
        raise YamlBodyError("YAML nested too deeply") from None
    except (TypeError, ValueError) as error:  # dates, binary, NaN: no JSON for them
        raise YamlBodyError(f"the YAML holds a value JSON cannot: {error}") from None
    return value


class YamlBodies:
    """A YAML body on one of ``paths`` (POST) becomes JSON; a bad one is a 422 naming (body)."""

    def __init__(self, app: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = list(scope.get("headers") or ())
        content_type = dict(headers).get(b"content-type", b"")
        media_type = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        if media_type not in YAML_MEDIA_TYPES:
            await self.app(scope, receive, send)
            return
        body, gone = await read_whole_body(receive)
        if gone is not None:  # the client went away
            await self.app(scope, replay_body(gone, receive), send)
            return
        try:
            value = parse_yaml_body(body)
        except YamlBodyError as error:
            invalid = {"type": "yaml_invalid", "loc": ("body",), "msg": str(error)}
            await validation_response([invalid])(scope, receive, send)
            return
        body = json.dumps(value).encode()
        rewritten = [(k, v) for k, v in headers if k not in (b"content-type", b"content-length")]
        rewritten += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        replayed = {"type": "http.request", "body": body, "more_body": False}
        await self.app({**scope, "headers": rewritten}, replay_body(replayed, receive), send)
