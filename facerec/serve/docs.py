"""``/docs`` without a network: the API reference rendered on the server from the app's OpenAPI
schema, as one HTML page with a local stylesheet.

FastAPI's own ``/docs`` loads Swagger UI's script and styles from a CDN, so it is a blank page on
a machine without internet, and no installed package ships Swagger UI's assets (checked in
site-packages: neither fastapi, starlette nor ray carries them), so nothing can be served
locally in its place. This page lists every operation with its parameters, request bodies,
responses and the schemas they use; ``/openapi.json`` stays the machine-readable source.
"""

from __future__ import annotations

from html import escape
from typing import Any

_METHODS = ("get", "post", "put", "patch", "delete")


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type_of(schema: dict[str, Any] | None) -> str:
    """A one-line type: ``integer [1, 1000]``, ``array of string (binary)``, ``SearchResponse``."""
    if not schema:
        return "any"
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            parts = [_type_of(s) for s in schema[key] if s.get("type") != "null"]
            nullable = any(s.get("type") == "null" for s in schema[key])
            return " | ".join(parts) + (" | null" if nullable else "")
    t = schema.get("type", "object")
    if t == "array":
        return f"array of {_type_of(schema.get('items'))}"
    out = escape(str(t))
    if "format" in schema:
        out += f" ({escape(str(schema['format']))})"
    if "enum" in schema:
        out += ": one of " + ", ".join(f"<code>{escape(repr(v))}</code>" for v in schema["enum"])
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    if lo is not None or hi is not None:
        out += f" [{'' if lo is None else lo}, {'' if hi is None else hi}]"
    if t == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        out += f" of {_type_of(schema['additionalProperties'])}"
    return out


def _fields_table(schema: dict[str, Any]) -> str:
    props = schema.get("properties") or {}
    if not props:
        return f"<p>{_type_of(schema)}</p>"
    required = set(schema.get("required") or [])
    rows = []
    for name, s in props.items():
        desc = s.get("description") or s.get("title") or ""
        default = f" (default <code>{escape(repr(s['default']))}</code>)" if "default" in s else ""
        rows.append(f"<tr><td><code>{escape(name)}</code>{' *' if name in required else ''}</td>"
                    f"<td>{_type_of(s)}</td><td>{escape(str(desc))}{default}</td></tr>")
    return "<table><tr><th>field</th><th>type</th><th>description</th></tr>" + "".join(rows) + "</table>"


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    anchor = f"op-{method}-{path}".replace("/", "_").replace("{", "").replace("}", "")
    html = [f'<section class="op" id="{escape(anchor)}"><h3><span class="method {method}">{method.upper()}</span> '
            f"<code>{escape(path)}</code></h3>"]
    if op.get("summary"):
        html.append(f"<p class=\"summary\">{escape(op['summary'])}</p>")
    if op.get("description"):
        html.append(f"<p>{escape(op['description'])}</p>")
    params = op.get("parameters") or []
    if params:
        rows = "".join(
            f"<tr><td><code>{escape(p['name'])}</code>{' *' if p.get('required') else ''}</td><td>{escape(p.get('in', ''))}</td>"
            f"<td>{_type_of(p.get('schema'))}</td><td>{escape(p.get('description') or '')}</td></tr>" for p in params)
        html.append("<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th><th>description</th></tr>"
                    f"{rows}</table>")
    body = op.get("requestBody")
    if body:
        html.append("<h4>Request body</h4>")
        if body.get("description"):
            html.append(f"<p>{escape(body['description'])}</p>")
        for ctype, content in (body.get("content") or {}).items():
            html.append(f"<p class=\"ctype\"><code>{escape(ctype)}</code></p>")
            schema = content.get("schema") or {}
            html.append(_fields_table(schema) if "properties" in schema else f"<p>{_type_of(schema)}</p>")
    responses = op.get("responses") or {}
    if responses:
        rows = []
        for status, r in responses.items():
            kinds = ", ".join(
                f"<code>{escape(c)}</code> {_type_of(v.get('schema')) if v.get('schema') else ''}"
                for c, v in (r.get("content") or {}).items())
            rows.append(f"<tr><td>{escape(str(status))}</td><td>{escape(r.get('description') or '')}</td><td>{kinds}</td></tr>")
        html.append("<h4>Responses</h4><table><tr><th>status</th><th>meaning</th><th>body</th></tr>"
                    + "".join(rows) + "</table>")
    html.append("</section>")
    return "".join(html)


def render_docs(spec: dict[str, Any], prefix: str = "") -> str:
    """The HTML page of ``spec`` (an OpenAPI 3 document); links start with ``prefix`` (the app's
    route prefix)."""
    info = spec.get("info") or {}
    ops, toc = [], []
    for path, item in (spec.get("paths") or {}).items():
        for method in _METHODS:
            if method in item:
                op = item[method]
                anchor = f"op-{method}-{path}".replace("/", "_").replace("{", "").replace("}", "")
                toc.append(f'<li><a href="#{escape(anchor)}"><span class="method {method}">{method.upper()}</span> '
                           f"<code>{escape(path)}</code></a> {escape(op.get('summary') or '')}</li>")
                ops.append(_operation(path, method, op))
    schemas = (spec.get("components") or {}).get("schemas") or {}
    schema_html = "".join(
        f'<section class="schema" id="schema-{escape(name)}"><h3>{escape(name)}</h3>'
        + (f"<p>{escape(s['description'])}</p>" if s.get("description") else "") + _fields_table(s) + "</section>"
        for name, s in schemas.items())
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{escape(str(info.get('title', 'API')))} — API reference</title>
  <link rel="icon" href="{prefix}/favicon.ico">
  <link rel="stylesheet" href="{prefix}/static/docs.css">
</head>
<body>
  <header><h1>{escape(str(info.get('title', 'API')))} <small>{escape(str(info.get('version', '')))}</small></h1>
    <p>{escape(str(info.get('description', '')))}</p>
    <p>Machine-readable schema: <a href="{prefix}/openapi.json">openapi.json</a> · <a href="{prefix}/">web page</a></p>
  </header>
  <main>
    <h2>Endpoints</h2>
    <ul class="toc">{''.join(toc)}</ul>
    {''.join(ops)}
    <h2>Schemas</h2>
    {schema_html}
  </main>
</body>
</html>
"""
