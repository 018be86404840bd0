"""/docs: the API's routes as one plain HTML page, drawn here from the OpenAPI schema.

FastAPI's own /docs loads Swagger UI from a CDN: blank offline, and a third party's script running
on the API's origin, beside the photos. This page has no script at all (its Content-Security-Policy
says so), and /openapi.json stays for tools that want the schema.
"""

from __future__ import annotations

import html
from typing import Any

# Nothing but this page's own inline style: no script, no request anywhere else.
POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

_STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{margin-top:2rem;border-bottom:1px solid #ccc} .route{margin:1rem 0} code{background:#f3f3f3;padding:0 .2rem}
.method{font-weight:bold;display:inline-block;min-width:4rem} .fields{margin:.3rem 0 0 4.3rem;color:#444}"""


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    options = schema.get("oneOf") or schema.get("anyOf")
    if options:
        return " | ".join(_schema_name(option) for option in options)
    if schema.get("type") == "array":
        return f"list of {_schema_name(schema.get('items', {}))}"
    return str(schema.get("type", "any"))


def render(schema: dict[str, Any]) -> str:
    """The page for an OpenAPI schema: every route with its summary, parameters and body, by tag."""
    e = html.escape
    info = schema.get("info", {})
    by_tag: dict[str, list[str]] = {}
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            parameters = [f"<code>{e(p['name'])}</code> ({e(p.get('in', ''))})"
                          for p in operation.get("parameters", [])]
            body = operation.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                parameters.append(f"body: <code>{e(media)}</code> {e(_schema_name(content.get('schema', {})))}")
            text = operation.get("description") or operation.get("summary") or ""
            block = (f'<div class="route"><span class="method">{e(method.upper())}</span> <code>{e(path)}</code>'
                     f"<div class=\"fields\">{e(text)}"
                     + (f"<br>{', '.join(parameters)}" if parameters else "") + "</div></div>")
            by_tag.setdefault((operation.get("tags") or ["other"])[0], []).append(block)
    sections = "".join(f"<h2>{e(tag)}</h2>{''.join(blocks)}" for tag, blocks in by_tag.items())
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{e(info.get('title', 'API'))} API</title>"
            f"<style>{_STYLE}</style></head><body><h1>{e(info.get('title', 'API'))} {e(info.get('version', ''))}</h1>"
            f"<p>{e(info.get('description', ''))}</p><p>The full schema: <a href=\"/openapi.json\">/openapi.json</a>. "
            "Errors come back as <code>{\"detail\": \"one line\"}</code>.</p>"
            f"{sections}</body></html>")
