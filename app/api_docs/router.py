"""`/docs` and `/redoc` served from assets vendored into the package, so they work offline."""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_PATH = "/docs-static"
SWAGGER = f"{STATIC_PATH}/swagger-ui-5.35.0"
REDOC = f"{STATIC_PATH}/redoc-2.5.4"
FAVICON = f"{SWAGGER}/favicon-32x32.png"
REDOC_OFFLINE = f"{STATIC_PATH}/offline/redoc-offline.js"

# Under /docs, so the request context gives it the docs' security headers.
static_files = StaticFiles(directory=Path(__file__).parent / "static")
router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI for the app's OpenAPI document."""
    app = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER}/swagger-ui.css",
        swagger_favicon_url=FAVICON,
        # The default validator is swagger.io's online one: a request leaving the machine.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """ReDoc for the app's OpenAPI document."""
    app = request.app
    script = f"{REDOC}/redoc.standalone.js"
    page = get_redoc_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} - ReDoc",
        redoc_js_url=script,
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,
    )
    # Before ReDoc, the shim that keeps its footer logo from reaching its CDN.
    html = bytes(page.body).decode()
    shim = f'<script src="{REDOC_OFFLINE}"></script>\n    <script src="{script}">'
    return HTMLResponse(html.replace(f'<script src="{script}">', shim, 1))
