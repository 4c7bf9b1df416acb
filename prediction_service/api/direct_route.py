"""DirectRoute: an APIRoute that calls its endpoint without FastAPI's per-request dependency solving.

On ``POST /v1/models/{name}/predict`` under load, solving dependencies (cache keys, security-scheme
checks, cookie parsing) took about an eighth of the event loop's time (py-spy during
``bench/serve_bench.py``). The predict endpoint needs only its path parameters, the request and
``async def dep(request)`` checks, and returns a Response itself, so this route supplies those
directly. OpenAPI is generated from the endpoint's signature as for any route. Anything else in the
signature is refused when the route is defined.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class DirectRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        dependant = self.dependant
        unsupported = (dependant.query_params or dependant.header_params or dependant.cookie_params
                       or dependant.body_params or dependant.request_param_name is None)
        if unsupported:
            raise TypeError(f"{self.path}: DirectRoute supports path parameters, the Request and "
                            "`async def dep(request)` dependencies only")
        checks = []
        for sub in dependant.dependencies:
            parameters = list(inspect.signature(sub.call).parameters)
            if not inspect.iscoroutinefunction(sub.call) or parameters != ["request"] or sub.name is None:
                raise TypeError(f"{self.path}: DirectRoute dependencies must be `async def dep(request)` "
                                f"bound to a parameter, not {sub.call!r}")
            checks.append((sub.name, sub.call))
        path_names = [field.name for field in dependant.path_params]
        request_name = dependant.request_param_name
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            kwargs: dict[str, Any] = {name: request.path_params[name] for name in path_names}
            kwargs[request_name] = request
            for name, check in checks:
                kwargs[name] = await check(request)
            response = await endpoint(**kwargs)
            if not isinstance(response, Response):  # nothing here serialises return values
                raise TypeError(f"{self.path}: a DirectRoute endpoint returns a Response")
            return response

        return handler
