"""``/docs`` and ``/redoc`` work offline (issue 15): every script, style and icon they load is served by
the service itself; no page refers to another host."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.parametrize("store_kind", ["memory"], indirect=True)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_only_local_assets(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html), "a page loads something from another host"
    assets = re.findall(r"(?:src|href|url)[=:]\s*[\"']?(/docs-assets/[^\"' )]+)", html)
    assert assets, html
    for asset in assets + ["/openapi.json"]:
        served = client.get(asset)
        assert served.status_code == 200 and len(served.content) > 1000, asset


def test_the_swagger_ui_bundle_is_the_real_one(client: TestClient) -> None:
    script = client.get("/docs-assets/swagger-ui-bundle.js")
    assert (
        script.status_code == 200 and len(script.content) > 500_000 and b"SwaggerUIBundle" in script.content
    )
