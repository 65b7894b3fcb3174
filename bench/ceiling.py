"""The ceiling: the same HTTP server (uvicorn, Starlette) answering 200 with no work."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def callbacks(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"status": "accepted"})


app = Starlette(routes=[Route("/callbacks", callbacks, methods=["POST"])])
