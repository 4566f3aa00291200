"""REST API views: parse with a serializer, call a service, render. No logic here."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import exceptions as drf_exceptions
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.decorators import action
from rest_framework.exceptions import APIException
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from mailadmin import configdoc
from mailadmin.api.pagination import LimitOffset
from mailadmin.api.parsers import PARSERS
from mailadmin.api.permissions import IsReader
from mailadmin.api.schema import ApiSchema
from mailadmin.api.serializers import (
    AuthBlockSerializer,
    DomainSerializer,
    RelayCheckResultSerializer,
    RelayCheckSerializer,
    ServerSerializer,
    SessionSerializer,
    TokenRequestSerializer,
    TokenSerializer,
    UnblockResultSerializer,
    UnblockSerializer,
    UserSerializer,
    WorkerSerializer,
)
from mailadmin.api.yaml import YAMLParser, YAMLRenderer
from mailadmin.exceptions import ConfigError, flatten_drf_errors
from mailadmin.lockout import LOCKED_STATUS, cooloff_seconds, lockout_message
from mailadmin.models import ConfigSnapshot, Domain, ServerState, SmtpUser, VirtualServer
from mailadmin.relaytest import relay_test
from mailadmin.selectors.nodes import auth_blocks, sessions_list, worker_statuses
from mailadmin.services.config import authblocks as authblock_services
from mailadmin.services.config import control as control_services
from mailadmin.services.config import domains as domain_services
from mailadmin.services.config import servers as server_services
from mailadmin.services.config import users as user_services
from mailadmin.services.config.versions import VersionConflict, current_version
from smtpworker.core.grammar import GrammarError


def _author(request: Request) -> str:
    return f"api:{request.user.get_username()}"


class CrudViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    schema = ApiSchema()
    parser_classes = PARSERS
    pagination_class = LimitOffset


@extend_schema(tags=["servers"])
class ServerViewSet(CrudViewSet):
    """SMTP virtual servers. Every change is a new configuration version."""

    serializer_class = ServerSerializer
    filterset_fields = ["state", "node"]
    search_fields = ["name", "description", "fqdn"]
    ordering_fields = ["name", "id", "state"]

    def get_queryset(self) -> QuerySet[VirtualServer]:
        return VirtualServer.objects.prefetch_related("bindings", "access_entries", "domains")

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        self._valid_or_every_error(serializer)
        self.perform_create(serializer)
        headers = self.get_success_headers(serializer.data)
        return Response(serializer.data, status=status.HTTP_201_CREATED, headers=headers)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        partial = kwargs.pop("partial", False)
        serializer = self.get_serializer(self.get_object(), data=request.data, partial=partial)
        self._valid_or_every_error(serializer)
        self.perform_update(serializer)
        return Response(serializer.data)

    def _valid_or_every_error(self, serializer: Any) -> None:
        """Field errors come with the cross-object ones (a binding another running server
        holds, PROXY without a trusted proxy), so one answer lists every error."""
        if serializer.is_valid():
            return
        errors = list(flatten_drf_errors(serializer.errors))
        raw = self.request.data if isinstance(self.request.data, Mapping) else {}
        instance = serializer.instance
        peers = server_services.running_peers(exclude=instance)
        errors.extend(server_services.server_cross_errors(server=instance, raw=raw, peers=peers))
        raise ConfigError(errors)

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = server_services.server_create(
            data=dict(serializer.validated_data), author=_author(self.request)
        )

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = server_services.server_update(
            server=serializer.instance,
            data=dict(serializer.validated_data),
            author=_author(self.request),
        )

    def perform_destroy(self, instance: VirtualServer) -> None:
        server_services.server_delete(server=instance, author=_author(self.request))

    def _set_state(self, request: Request, state: str) -> Response:
        server = server_services.server_set_state(
            server=self.get_object(), state=state, author=_author(request)
        )
        return Response(self.get_serializer(self.get_queryset().get(pk=server.pk)).data)

    @extend_schema(request=RelayCheckSerializer, responses=RelayCheckResultSerializer)
    @action(detail=True, methods=["post"], url_path="check-relay", permission_classes=[IsReader])
    def check_relay(self, request: Request, pk: str | None = None) -> Response:
        """Would this server take this mail from this client, and which rule decides?

        Runs the worker's own policy on the server as stored now (operators may ask too:
        it changes nothing)."""
        serializer = RelayCheckSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            result = relay_test(
                self.get_object(),
                client_ip=data["client_ip"],
                authenticated_user=data.get("authenticated_user") or None,
                tls=data.get("tls", False),
                sender=data.get("sender", ""),
                recipient=data["recipient"],
            )
        except GrammarError as exc:
            raise ConfigError.at(("client_ip",), str(exc)) from exc
        steps = [
            {
                "code": d.code,
                "enhanced": d.enhanced,
                "text": d.text,
                "rule": d.rule,
                "reply": d.reply,
            }
            for d in result.steps
        ]
        return Response(
            {
                "accepted": result.accepted,
                "decided_by": result.deciding.rule,
                "steps": steps,
                "notes": result.notes,
            }
        )

    @extend_schema(
        request=None,
        responses={
            200: AuthBlockSerializer(many=True),
            503: OpenApiResponse(description="Redis, where the blocks are kept, is down."),
        },
    )
    @action(detail=True, methods=["get"], url_path="auth-blocks", pagination_class=None)
    def auth_blocks(self, request: Request, pk: str | None = None) -> Response:
        """The clients the AUTH brake blocks on this server now, soonest end first.

        A blocked client's AUTH is answered 454 on this server only; its connections and
        mail that needs no AUTH are served as ever."""
        blocks = auth_blocks(self.get_object().name)
        if blocks is None:
            return _brake_unavailable()
        return Response(AuthBlockSerializer(blocks, many=True).data)

    @extend_schema(
        request=UnblockSerializer,
        responses={
            200: UnblockResultSerializer,
            503: OpenApiResponse(description="Redis, where the blocks are kept, is down."),
        },
    )
    @action(detail=True, methods=["post"], url_path="auth-blocks/unblock")
    def auth_unblock(self, request: Request, pk: str | None = None) -> Response:
        """Lift a client's AUTH block on this server (administrators only)."""
        serializer = UnblockSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            client = authblock_services.auth_unblock(
                server=self.get_object(),
                address=serializer.validated_data["address"],
                author=_author(request),
            )
        except authblock_services.BrakeUnavailable:
            return _brake_unavailable()
        return Response({"client": client})

    @extend_schema(request=None, responses=ServerSerializer)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        """Start the server (its bindings must not be used by another running server)."""
        return self._set_state(request, ServerState.STARTED)

    @extend_schema(request=None, responses=ServerSerializer)
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str | None = None) -> Response:
        """Stop the server: its listeners close."""
        return self._set_state(request, ServerState.STOPPED)

    @extend_schema(request=None, responses=ServerSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        """Pause the server: open sessions finish, new connections are refused."""
        return self._set_state(request, ServerState.PAUSED)


def _brake_unavailable() -> Response:
    return Response(
        {"detail": "The AUTH brake's store (Redis) does not answer; try again."},
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


@extend_schema(tags=["domains"])
class DomainViewSet(CrudViewSet):
    """Local (default and alias) and remote domains, filtered by ``?server=<id>``."""

    serializer_class = DomainSerializer
    filterset_fields = ["server", "kind", "is_default"]
    search_fields = ["name"]
    ordering_fields = ["name", "id"]

    def get_queryset(self) -> QuerySet[Domain]:
        return Domain.objects.select_related("server").order_by(
            "server__name", "-is_default", "name"
        )

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        server = data.pop("server")
        serializer.instance = domain_services.domain_create(
            server=server, data=data, author=_author(self.request)
        )

    def perform_update(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        if "server" in data and data.pop("server") != serializer.instance.server:
            raise ConfigError.at(("server",), "A domain cannot move to another server.")
        serializer.instance = domain_services.domain_update(
            domain=serializer.instance, data=data, author=_author(self.request)
        )

    def perform_destroy(self, instance: Domain) -> None:
        domain_services.domain_delete(domain=instance, author=_author(self.request))


@extend_schema(tags=["users"])
class UserViewSet(CrudViewSet):
    """SMTP user accounts for AUTH. Passwords are write-only."""

    serializer_class = UserSerializer
    filterset_fields = ["is_active"]
    search_fields = ["username"]
    ordering_fields = ["username", "id"]

    def get_queryset(self) -> QuerySet[SmtpUser]:
        return SmtpUser.objects.prefetch_related("servers")

    def _data(self, serializer: Any) -> dict[str, Any]:
        data = dict(serializer.validated_data)
        if "servers" in data:
            data["servers"] = list(data["servers"])
        return data

    def perform_create(self, serializer: Any) -> None:
        serializer.instance = user_services.user_create(
            data=self._data(serializer), author=_author(self.request)
        )

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = user_services.user_update(
            user=serializer.instance, data=self._data(serializer), author=_author(self.request)
        )

    def perform_destroy(self, instance: SmtpUser) -> None:
        user_services.user_delete(user=instance, author=_author(self.request))


_ImportResult = inline_serializer(
    "ConfigImportResult",
    {"version": serializers.IntegerField(), "changed": serializers.BooleanField()},
)
_ImportErrors = inline_serializer(
    "ConfigImportErrors",
    {
        "detail": serializers.CharField(),
        "errors": inline_serializer(
            "ConfigImportError",
            {"path": serializers.CharField(), "message": serializers.CharField()},
            many=True,
            required=False,
            help_text="Absent when the body could not be parsed at all (then see detail).",
        ),
    },
)


class PreconditionFailed(APIException):
    status_code = status.HTTP_412_PRECONDITION_FAILED
    default_detail = "The configuration changed since the version given in If-Match."
    default_code = "precondition_failed"


_Detail = inline_serializer("ErrorDetail", {"detail": serializers.CharField()})
_ETAG = OpenApiParameter(
    "ETag",
    str,
    OpenApiParameter.HEADER,
    response=[200],
    description='The configuration version in force, as an entity tag: `"7"`.',
)
_IF_MATCH = OpenApiParameter(
    "If-Match",
    str,
    OpenApiParameter.HEADER,
    description=(
        'The ETag of the document the edit is based on (`"7"`, or several, comma-separated). '
        "If another version is in force the answer is 412 and nothing changes; `*` or no "
        "header: the edit is unconditional."
    ),
)
# One entity tag of an If-Match list: strong ("7") or weak (W/"7"), RFC 9110 section 8.8.3.
_ENTITY_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e]*)"\s*(?:,|$)')


def _version_headers(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"', "X-Config-Version": str(version)}


def _header_error(exc: ValueError) -> dict[str, str]:
    return {"path": "If-Match", "message": str(exc)}


def _if_match(request: Request) -> tuple[int, ...] | None:
    """The versions an If-Match header accepts; None when it sets no condition.

    Strong comparison, as RFC 9110 requires for If-Match: a weak tag matches nothing.
    Raise ValueError for a header that is not a list of entity tags.
    """
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    versions: list[int] = []
    position = 0
    while position < len(header) or position == 0:
        match = _ENTITY_TAG.match(header, position)
        if match is None or match.end() == position:
            raise ValueError('If-Match must be the ETag of GET /api/v1/config/, quoted: "7".')
        weak, tag = match.group(1), match.group(2)
        if not weak and tag.isascii() and tag.isdigit() and len(tag) < 19:
            versions.append(int(tag))
        position = match.end()
    return tuple(versions)


@extend_schema(tags=["config"])
class ConfigDocumentView(APIView):
    """The whole configuration as one document (JSON, or YAML with application/yaml)."""

    schema = ApiSchema()

    parser_classes = [JSONParser, YAMLParser]
    renderer_classes = [JSONRenderer, YAMLRenderer]

    @extend_schema(
        responses={200: OpenApiResponse(description="The configuration document.")},
        parameters=[_ETAG],
    )
    def get(self, request: Request) -> Response:
        """Export the configuration; secrets are left out. The ``ETag`` is its version."""
        # The version first: a change committed between the two reads makes the tag
        # older than the document, so an edit based on it gets 412, never a silent win.
        version = current_version()
        return Response(configdoc.document_export(), headers=_version_headers(version))

    @extend_schema(
        request={"application/json": dict, "application/yaml": dict},
        parameters=[_IF_MATCH, _ETAG],
        responses={
            200: _ImportResult,
            400: _ImportErrors,
            412: OpenApiResponse(
                _Detail, description="If-Match names a version that is no longer in force."
            ),
        },
    )
    def put(self, request: Request) -> Response:
        """Replace the whole configuration, atomically: any error and nothing changes.

        With ``If-Match: "<version>"`` (the ETag of GET) the edit is made only if that
        version is still in force, else 412 and nothing changes: two administrators cannot
        silently overwrite each other's edits.
        """
        try:
            if_match = _if_match(request)
        except ValueError as exc:  # the document's error shape, at the header's name
            return Response(
                {"detail": f"{exc} Nothing was changed.", "errors": [_header_error(exc)]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        try:
            result = configdoc.document_import(
                request.data, author=_author(request), if_match=if_match
            )
        except VersionConflict as exc:
            raise PreconditionFailed(str(exc)) from exc
        except ConfigError as exc:
            count = len(exc.errors)
            return Response(
                {
                    "detail": f"The document has {count} error{'s' if count != 1 else ''}; nothing was changed.",
                    "errors": [e.as_dict() for e in exc.errors],
                },
                status=status.HTTP_400_BAD_REQUEST,
            )
        return Response(
            {"version": result.version, "changed": result.changed},
            headers=_version_headers(result.version),
        )


@extend_schema(tags=["config"])
class ConfigVersionView(APIView):
    """The configuration version now in force, with who made it and when."""

    schema = ApiSchema()

    @extend_schema(
        responses=inline_serializer(
            "ConfigVersion",
            {
                "version": serializers.IntegerField(),
                "author": serializers.CharField(),
                "reason": serializers.CharField(),
                "created": serializers.DateTimeField(allow_null=True),
            },
        )
    )
    def get(self, request: Request) -> Response:
        latest = ConfigSnapshot.objects.order_by("-id").first()
        return Response(
            {
                "version": latest.pk if latest else 0,
                "author": latest.author if latest else "",
                "reason": latest.reason if latest else "",
                "created": latest.created if latest else None,
            }
        )


@extend_schema(tags=["auth"], request=TokenRequestSerializer, responses=TokenSerializer)
class TokenView(APIView):
    """Exchange a console user's name and password for an API token."""

    schema = ApiSchema()
    parser_classes = PARSERS

    permission_classes = [AllowAny]
    authentication_classes: list[type] = []
    # Failed attempts count towards the login limits (mailadmin.lockout); 429 when reached.
    login_rate_limited = True

    def post(self, request: Request) -> Response:
        serializer = AuthTokenSerializer(data=request.data, context={"request": request})
        valid = serializer.is_valid()
        # axes marks the request it was given (DRF's, not Django's) when it refused.
        if getattr(request, "axes_locked_out", False):
            return Response(
                {"detail": lockout_message()},
                status=LOCKED_STATUS,
                headers={"Retry-After": str(cooloff_seconds())},
            )
        if not valid:
            raise drf_exceptions.ValidationError(serializer.errors)
        token, _created = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key})


@extend_schema(tags=["runtime"])
class SessionViewSet(viewsets.ViewSet):
    """SMTP clients connected now, on every live worker node (IIS's Current Sessions)."""

    schema = ApiSchema()

    serializer_class = SessionSerializer

    @extend_schema(
        responses=SessionSerializer(many=True),
        parameters=[OpenApiParameter("server", str, description="only this server's sessions")],
    )
    def list(self, request: Request) -> Response:
        sessions = sessions_list(worker_statuses())
        server = request.query_params.get("server")
        if server:
            sessions = [s for s in sessions if s["server"] == server]
        return Response(SessionSerializer(sessions, many=True).data)

    @extend_schema(
        request=None,
        parameters=[OpenApiParameter("id", str, OpenApiParameter.PATH, description="node:session")],
        responses=inline_serializer("TerminateResult", {"terminated": serializers.BooleanField()}),
    )
    @action(detail=True, methods=["post"])
    def terminate(self, request: Request, pk: str | None = None) -> Response:
        """Disconnect the client (it may reconnect; deny it under connection control)."""
        done = control_services.session_terminate(session_id=pk or "", author=_author(request))
        return Response({"terminated": done})


@extend_schema(tags=["runtime"])
class WorkerViewSet(viewsets.ViewSet):
    """SMTP worker nodes: applied configuration version, heartbeat, staleness."""

    schema = ApiSchema()

    serializer_class = WorkerSerializer

    @extend_schema(responses=WorkerSerializer(many=True))
    def list(self, request: Request) -> Response:
        latest = current_version()
        workers = [
            {
                "node": s.get("node", ""),
                "applied_version": s.get("applied_version", 0),
                "latest_version": latest,
                # Not "<": a node running another database's higher number is out of step too.
                "behind": s.get("applied_version", 0) != latest,
                "heartbeat": s.get("heartbeat", 0),
                "stale": s["stale"],
                "config_error": s.get("config_error", ""),
                "servers": s.get("servers", {}),
            }
            for s in worker_statuses()
        ]
        return Response(WorkerSerializer(workers, many=True).data)
