"""The error tree, its stable codes, and the RFC 9457 problem+json handlers.

    WaystationError                  (500 INTERNAL_ERROR)
    ├── BadRequest                   (400)
    ├── Unauthorized                 (401)
    ├── Forbidden                    (403)
    ├── NotFound                     (404)
    ├── Conflict                     (409)
    ├── Gone                         (410)
    ├── Unprocessable                (422)
    ├── RateLimited                  (429)
    └── ServiceUnavailable           (503)

Every concrete error has a `code` that never changes once published; `docs/errors.md` lists them
all (a test keeps that true). Raw Python, database or library exceptions never reach a client.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

#: code → (status, title); filled by every error class and by `register_code`.
ERROR_CODES: dict[str, tuple[int, str]] = {}


def register_code(code: str, status: int, title: str) -> str:
    ERROR_CODES[code] = (status, title)
    return code


class WaystationError(Exception):
    """Base of every business error: a stable code, an HTTP status and a human message."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"
    title: ClassVar[str] = "Internal error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ERROR_CODES[cls.code] = (cls.status, cls.title)

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.title
        self.extra = extra
        super().__init__(self.detail)

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://waystation.dev/errors/{self.code.lower().replace('_', '-')}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


ERROR_CODES[WaystationError.code] = (WaystationError.status, WaystationError.title)


# --- generic families -----------------------------------------------------------------------


class BadRequest(WaystationError):
    status = 400
    code = "BAD_REQUEST"
    title = "Bad request"


class Unauthorized(WaystationError):
    status = 401
    code = "UNAUTHORIZED"
    title = "Authentication required"


class Forbidden(WaystationError):
    status = 403
    code = "FORBIDDEN"
    title = "Not allowed"


class NotFound(WaystationError):
    status = 404
    code = "NOT_FOUND"
    title = "Not found"


class Conflict(WaystationError):
    status = 409
    code = "CONFLICT"
    title = "Conflict"


class Gone(WaystationError):
    status = 410
    code = "GONE"
    title = "Gone"


class Unprocessable(WaystationError):
    status = 422
    code = "VALIDATION_FAILED"
    title = "Request is not valid"


class RateLimited(WaystationError):
    status = 429
    code = "RATE_LIMITED"
    title = "Too many requests"


class ServiceUnavailable(WaystationError):
    status = 503
    code = "SERVICE_UNAVAILABLE"
    title = "Service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    code = "DATABASE_UNAVAILABLE"
    title = "The database is not reachable"


# --- auth -------------------------------------------------------------------------------------


class InvalidCredentials(Unauthorized):
    code = "INVALID_CREDENTIALS"
    title = "Wrong username or password"


class TokenInvalid(Unauthorized):
    code = "TOKEN_INVALID"
    title = "The token is missing, malformed, expired or revoked"


class InsufficientRole(Forbidden):
    code = "INSUFFICIENT_ROLE"
    title = "Your role does not allow this"


class SetupAlreadyDone(Conflict):
    code = "SETUP_ALREADY_DONE"
    title = "The station already has an owner"


class SetupTokenInvalid(Forbidden):
    code = "SETUP_TOKEN_INVALID"
    title = "The setup token is wrong or was already used"


class UserNotFound(NotFound):
    code = "USER_NOT_FOUND"
    title = "User not found"


class UserExists(Conflict):
    code = "USER_EXISTS"
    title = "A user with this name already exists"


class PasswordTooWeak(Unprocessable):
    code = "PASSWORD_TOO_WEAK"
    title = "The password is too weak"


# --- stations and devices -----------------------------------------------------------------------


class StationNotFound(NotFound):
    code = "STATION_NOT_FOUND"
    title = "Station not found"


class DeviceNotFound(NotFound):
    code = "DEVICE_NOT_FOUND"
    title = "Device not found"


class DeviceExists(Conflict):
    code = "DEVICE_EXISTS"
    title = "A device with this id already exists"


class DeviceTypeNotFound(Unprocessable):
    code = "DEVICE_TYPE_UNKNOWN"
    title = "Unknown device type"


class CommandUnknown(Unprocessable):
    code = "COMMAND_UNKNOWN"
    title = "This device type does not accept that command"


class CommandInvalid(Unprocessable):
    code = "COMMAND_INVALID"
    title = "The command parameters are not valid for this device type"


class CommandNotFound(NotFound):
    code = "COMMAND_NOT_FOUND"
    title = "Command not found"


# --- broker -----------------------------------------------------------------------------------


class BrokerPortInUse(WaystationError):
    code = "BROKER_PORT_IN_USE"
    title = "The embedded broker's port is already taken"


class BrokerStartFailed(WaystationError):
    code = "BROKER_START_FAILED"
    title = "The embedded broker did not start"


# Codes produced by the framework-level handlers below.
register_code("NOT_FOUND", 404, "Not found")
register_code("METHOD_NOT_ALLOWED", 405, "Method not allowed")
register_code("PAYLOAD_TOO_LARGE", 413, "Request body too large")
register_code("UNSUPPORTED_MEDIA_TYPE", 415, "Unsupported media type")
register_code("HTTP_ERROR", 400, "HTTP error")

_HTTP_STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_FAILED",
    429: "RATE_LIMITED",
    503: "SERVICE_UNAVAILABLE",
}


def problem_response(error: WaystationError, request: Request | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(
        error.to_problem(request.url.path if request else None),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _clean_validation_errors(errors: list[Any]) -> list[dict[str, Any]]:
    # Input values may hold secrets (passwords); report where and why, never what.
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Render every failure as problem+json with a stable `code`."""

    @app.exception_handler(WaystationError)
    async def _business(request: Request, exc: WaystationError) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean_validation_errors(list(exc.errors()))
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        err = Unprocessable(f"{where}: {first['msg']}", errors=errors)
        return problem_response(err, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_STATUS_CODES.get(exc.status_code, "HTTP_ERROR")
        detail = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        body = {
            "type": "about:blank",
            "title": detail,
            "status": exc.status_code,
            "detail": detail,
            "code": code,
            "instance": request.url.path,
        }
        return JSONResponse(
            body, status_code=exc.status_code, media_type=PROBLEM_JSON, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(ConnectionError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DBAPIError) and not isinstance(exc, OperationalError | InterfaceError):
            return await _unknown(request, exc)
        log.warning("database error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return problem_response(
            DatabaseUnavailable("The database did not answer; try again shortly."), request
        )

    @app.exception_handler(Exception)
    async def _unknown(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(WaystationError("An unexpected error occurred."), request)


# --- telemetry --------------------------------------------------------------------------------------


class ChannelNotFound(NotFound):
    code = "CHANNEL_NOT_FOUND"
    title = "Channel not found"


class InvalidTimeRange(Unprocessable):
    code = "INVALID_TIME_RANGE"
    title = "The time range is not valid"


class ExperimentNotFound(NotFound):
    code = "EXPERIMENT_NOT_FOUND"
    title = "Experiment not found"


class ExperimentRunning(Conflict):
    code = "EXPERIMENT_RUNNING"
    title = "An experiment is already running in this station"


class ExperimentStopped(Conflict):
    code = "EXPERIMENT_STOPPED"
    title = "The experiment has already stopped"


# --- flows --------------------------------------------------------------------------------------------


class FlowNotFound(NotFound):
    code = "FLOW_NOT_FOUND"
    title = "Flow not found"


class FlowExists(Conflict):
    code = "FLOW_EXISTS"
    title = "A flow with this code already exists"


class FlowInvalid(Unprocessable):
    code = "FLOW_INVALID"
    title = "The flow definition is not valid"


class MqttServerNotFound(NotFound):
    code = "MQTT_SERVER_NOT_FOUND"
    title = "MQTT server not found"


class MqttServerExists(Conflict):
    code = "MQTT_SERVER_EXISTS"
    title = "An MQTT server with this name already exists"


class MqttServerInUse(Conflict):
    code = "MQTT_SERVER_IN_USE"
    title = "Flows still use this MQTT server"
