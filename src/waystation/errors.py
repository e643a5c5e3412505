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
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
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
        self.headers: dict[str, str] = {}  # extra response headers (Retry-After)
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

    def __init__(self, detail: str | None = None, *, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.headers["Retry-After"] = str(retry_after)


class ServiceUnavailable(WaystationError):
    status = 503
    code = "SERVICE_UNAVAILABLE"
    title = "Service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    code = "DATABASE_UNAVAILABLE"
    title = "The database is not reachable"

    def __init__(self, detail: str | None = None, *, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.headers["Retry-After"] = str(retry_after)


class StorageFull(WaystationError):
    status = 507
    code = "STORAGE_FULL"
    title = "The database's disk is full"


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


class BrokerAdminMisconfigured(WaystationError):
    code = "BROKER_ADMIN_MISCONFIGURED"
    title = "WAYSTATION_BROKER_ADMIN cannot work with this broker setup"


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
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
    headers.update(error.headers)
    return JSONResponse(
        error.to_problem(request.url.path if request else None),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=headers or None,
    )


def http_problem_response(
    status: int, detail: str, instance: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error of the HTTP layer itself (no route, wrong method, body too large) as problem+json."""
    body = {
        "type": "about:blank",
        "title": detail,
        "status": status,
        "detail": detail,
        "code": _HTTP_STATUS_CODES.get(status, "HTTP_ERROR"),
        "instance": instance,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _clean_validation_errors(errors: list[Any]) -> list[dict[str, Any]]:
    # Input values may hold secrets (passwords); report where and why, never what.
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ]


def database_fault(exc: BaseException) -> WaystationError | None:
    """What a client should hear when `exc` means the database cannot serve now (down, restarting, locked
    too long, disk full); None when `exc` is some other failure."""
    orig = getattr(exc, "orig", None)
    sqlstate = str(getattr(orig, "sqlstate", "") or "")
    # SQLite says SQLITE_FULL in words only; PostgreSQL has SQLSTATE 53100 disk_full.
    if sqlstate == "53100" or "database or disk is full" in str(orig or exc):
        return StorageFull("The database's disk is full: reads still work, writes wait until space is freed.")
    # 08: connection exception, 57P: shutdown or starting up, 53300: too many connections.
    lost = sqlstate.startswith(("08", "57P")) or sqlstate == "53300"
    if (
        lost
        or isinstance(exc, OperationalError | InterfaceError | ConnectionError | SQLAlchemyTimeoutError)
        or (isinstance(exc, DBAPIError) and exc.connection_invalidated)
    ):
        return DatabaseUnavailable("The database did not answer; try again shortly.")
    return None


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
        detail = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        return http_problem_response(
            exc.status_code, detail, request.url.path, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(DBAPIError)
    @app.exception_handler(ConnectionError)
    @app.exception_handler(SQLAlchemyTimeoutError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        fault = database_fault(exc)
        if fault is not None:
            log.warning("%s on %s %s: %s", fault.code, request.method, request.url.path, type(exc).__name__)
            return problem_response(fault, request)
        # SQLSTATE class 22, "data exception": PostgreSQL refused a value the request carried (text with
        # a NUL character, which it cannot store). Bad input, not a station fault.
        if isinstance(exc, DBAPIError) and str(getattr(exc.orig, "sqlstate", "") or "").startswith("22"):
            log.info("refused value on %s %s: %s", request.method, request.url.path, exc.orig)
            return problem_response(
                Unprocessable("A value in the request cannot be stored (text must not contain NUL)."),
                request,
            )
        return await _unknown(request, exc)

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


# --- webhooks and deliveries --------------------------------------------------------------------------


class WebhookNotFound(NotFound):
    code = "WEBHOOK_NOT_FOUND"
    title = "Webhook not found"


class WebhookInvalid(Unprocessable):
    code = "WEBHOOK_INVALID"
    title = "The webhook definition is not valid"


class DeliveryNotFound(NotFound):
    code = "DELIVERY_NOT_FOUND"
    title = "Delivery not found"


class DeliveryNotRedeliverable(Conflict):
    code = "DELIVERY_NOT_REDELIVERABLE"
    title = "Only a dead-lettered delivery can be redelivered"


# --- dashboards ---------------------------------------------------------------------------------------


class DashboardNotFound(NotFound):
    code = "DASHBOARD_NOT_FOUND"
    title = "Dashboard not found"


class WidgetNotFound(NotFound):
    code = "WIDGET_NOT_FOUND"
    title = "Widget not found"


class WidgetConfigInvalid(Unprocessable):
    code = "WIDGET_CONFIG_INVALID"
    title = "The widget's config does not fit its kind"


class WidgetReferenceInvalid(Unprocessable):
    code = "WIDGET_REFERENCE_INVALID"
    title = "The widget names a channel or device that is not at the dashboard's station"


class LayoutInvalid(Unprocessable):
    code = "LAYOUT_INVALID"
    title = "The widget positions do not fit the dashboard"


class DashboardOwnerRequired(Unprocessable):
    code = "DASHBOARD_OWNER_REQUIRED"
    title = "Only a user can own a personal dashboard"


# --- security, stations, binding and broker sync ------------------------------------------------------


class SignatureInvalid(Unauthorized):
    code = "SIGNATURE_INVALID"
    title = "The request signature is missing, wrong, stale or replayed"


class MemberNotFound(NotFound):
    code = "MEMBER_NOT_FOUND"
    title = "Membership not found"


class LastOwner(Conflict):
    code = "LAST_OWNER"
    title = "A station must keep at least one owner"


class DeviceDisabled(Conflict):
    code = "DEVICE_DISABLED"
    title = "The device is disabled"


class BindTokenInvalid(NotFound):
    code = "BIND_TOKEN_INVALID"
    title = "Unknown bind token"


class BindTokenUsed(Conflict):
    code = "BIND_TOKEN_USED"
    title = "The bind token was already used"


class BindTokenExpired(Gone):
    code = "BIND_TOKEN_EXPIRED"
    title = "The bind token has expired"


class BrokerSyncUnavailable(ServiceUnavailable):
    code = "BROKER_SYNC_UNAVAILABLE"
    title = "Broker sync is not running on this station"


# --- rules and alerts ---------------------------------------------------------------------------------


class RuleNotFound(NotFound):
    code = "RULE_NOT_FOUND"
    title = "Rule not found"


class RuleInvalid(Unprocessable):
    code = "RULE_INVALID"
    title = "The rule definition is not valid"


class AlertNotFound(NotFound):
    code = "ALERT_NOT_FOUND"
    title = "Alert not found"


# --- firmware and OTA rollouts ------------------------------------------------------------------------


class FirmwareNotFound(NotFound):
    code = "FIRMWARE_NOT_FOUND"
    title = "Firmware not found"


class FirmwareExists(Conflict):
    code = "FIRMWARE_EXISTS"
    title = "This station already has firmware with this device type and version"


class FirmwareTooLarge(WaystationError):
    status = 413
    code = "FIRMWARE_TOO_LARGE"
    title = "The firmware file is larger than WAYSTATION_FIRMWARE_MAX_BYTES"


class FirmwareUploadInvalid(Unprocessable):
    code = "FIRMWARE_UPLOAD_INVALID"
    title = "The firmware upload is not valid"


class FirmwareInUse(Conflict):
    code = "FIRMWARE_IN_USE"
    title = "A running or paused rollout uses this firmware"


class FirmwareUrlInvalid(Forbidden):
    code = "FIRMWARE_URL_INVALID"
    title = "The firmware download link is not valid"


class FirmwareUrlExpired(Gone):
    code = "FIRMWARE_URL_EXPIRED"
    title = "The firmware download link has expired"


class OtaJobNotFound(NotFound):
    code = "OTA_JOB_NOT_FOUND"
    title = "Rollout not found"


class OtaJobFinished(Conflict):
    code = "OTA_JOB_FINISHED"
    title = "The rollout is already cancelled or completed"


class OtaJobNotPaused(Conflict):
    code = "OTA_JOB_NOT_PAUSED"
    title = "Only a paused rollout can be resumed"


class OtaTargetInvalid(Unprocessable):
    code = "OTA_TARGET_INVALID"
    title = "The rollout's devices do not fit the firmware"


class OtaDeviceBusy(Conflict):
    code = "OTA_DEVICE_BUSY"
    title = "A device is already part of a running or paused rollout"


# --- BLE provisioning ---------------------------------------------------------------------------------


class BleProvisioningDisabled(Conflict):  # a setting, not an outage: retrying will not help
    code = "BLE_PROVISIONING_DISABLED"
    title = "BLE provisioning is not enabled on this station"


class BleProvisioningOnLeader(ServiceUnavailable):
    """Several workers: the BLE manager (and the radio it drives) runs on the leader only."""

    code = "BLE_PROVISIONING_ON_LEADER"
    title = "BLE provisioning runs on the leader worker"


class CandidateNotFound(NotFound):
    code = "PROVISIONING_CANDIDATE_NOT_FOUND"
    title = "No BLE candidate with this address is known"


class ProvisioningNotFound(NotFound):
    code = "PROVISIONING_NOT_FOUND"
    title = "Provisioning not found"


class ProvisioningInProgress(Conflict):
    code = "PROVISIONING_IN_PROGRESS"
    title = "This candidate is already being provisioned"


class WifiNotConfigured(Conflict):
    code = "WIFI_NOT_CONFIGURED"
    title = "The station agent has not set the Wi-Fi credentials yet"


# --- plugin controllers -------------------------------------------------------------------------------


class ControllerNotFound(NotFound):
    code = "CONTROLLER_NOT_FOUND"
    title = "Controller not found"


class ControllerExists(Conflict):
    code = "CONTROLLER_EXISTS"
    title = "A controller with this id already exists"


class PluginInstanceNotFound(NotFound):
    code = "PLUGIN_INSTANCE_NOT_FOUND"
    title = "Plugin instance not found"


class PluginInstanceExists(Conflict):
    code = "PLUGIN_INSTANCE_EXISTS"
    title = "The controller already has a plugin instance with this name"


class MappingNotFound(NotFound):
    code = "MAPPING_NOT_FOUND"
    title = "Channel mapping not found"


class MappingExists(Conflict):
    code = "MAPPING_EXISTS"
    title = "The channel or the plugin channel is already mapped"


class MappingInvalid(Unprocessable):
    code = "MAPPING_INVALID"
    title = "The channel mapping is not valid"


class ChannelNotWritable(Conflict):
    code = "CHANNEL_NOT_WRITABLE"
    title = "Only output channels of controllers can be written"


class ValueOutOfRange(Unprocessable):
    code = "VALUE_OUT_OF_RANGE"
    title = "The value is outside the channel's range"


class ControllerOffline(ServiceUnavailable):
    code = "CONTROLLER_OFFLINE"
    title = "The channel's controller is not connected"


class ControllerWriteFailed(WaystationError):
    status = 502
    code = "CONTROLLER_WRITE_FAILED"
    title = "The controller's plugin refused or failed the write"


class ControllerTimeout(WaystationError):
    status = 504
    code = "CONTROLLER_TIMEOUT"
    title = "The controller did not answer in time"


# --- cloud link ---------------------------------------------------------------------------------------


class CloudNotConfigured(Conflict):
    code = "CLOUD_NOT_CONFIGURED"
    title = "No cloud URL is configured"


# --- snapshots ------------------------------------------------------------------------------------------


class SnapshotPassphraseWrong(BadRequest):
    code = "SNAPSHOT_PASSPHRASE_WRONG"
    title = "The passphrase does not open this snapshot"


class SnapshotCorrupt(BadRequest):
    code = "SNAPSHOT_CORRUPT"
    title = "The file is not a readable snapshot"


class SnapshotSchemaUnsupported(Unprocessable):
    code = "SNAPSHOT_SCHEMA_UNSUPPORTED"
    title = "The snapshot was written by a newer Waystation"


class SnapshotInvalid(Unprocessable):
    code = "SNAPSHOT_INVALID"
    title = "The snapshot's content is not valid"


class SnapshotNotFound(NotFound):
    code = "SNAPSHOT_NOT_FOUND"
    title = "Snapshot not found"


class SnapshotTooLarge(WaystationError):
    status = 413
    code = "SNAPSHOT_TOO_LARGE"
    title = "The snapshot file is too large"


# --- MCP ------------------------------------------------------------------------------------------------


class McpConfirmationNotFound(NotFound):
    code = "MCP_CONFIRMATION_NOT_FOUND"
    title = "MCP confirmation not found"


class McpConfirmationDecided(Conflict):
    code = "MCP_CONFIRMATION_DECIDED"
    title = "This confirmation was already decided"


class McpConfirmationExpired(Conflict):
    code = "MCP_CONFIRMATION_EXPIRED"
    title = "This confirmation has expired"


class McpWriteScopeRequired(Forbidden):
    code = "MCP_WRITE_SCOPE_REQUIRED"
    title = "This MCP tool needs a token with the mcp:write scope"
