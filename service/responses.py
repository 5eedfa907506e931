"""``FastJSONResponse``: JSON rendered by orjson, for the answers of the hot routes.

A route that returns it skips FastAPI's response validation and ``jsonable_encoder`` (the data is built
in the schema's shape by :mod:`service.recommender`; the route's ``response_model`` still documents it
in OpenAPI). orjson writes the same JSON as the standard library for this data (str, int, bool, None,
finite floats), several times faster.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

__all__ = ["FastJSONResponse"]


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
