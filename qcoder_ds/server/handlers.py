"""The chat's HTTP and WebSocket endpoints under ``{base_url}qcoder/`` (API: docs/chat.md).

Every endpoint goes through Jupyter Server's own authentication and authorization: the HTTP
ones are ``APIHandler``s (token or login cookie; XSRF checked on cookie-authenticated writes),
the socket is built as Jupyter's kernel socket is (``WebSocketMixin`` + ``JupyterHandler``,
``ws_authenticated``, origin check), authorized as ``execute`` on the ``qcoder`` resource.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from qcoder_ds.server.service import ChatError, ChatService

AUTH_RESOURCE = "qcoder"
SETTINGS_KEY = "qcoder_chat"


class _Base(APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def chat(self) -> ChatService:
        return self.settings[SETTINGS_KEY]

    def _json_body(self) -> Any:
        try:
            return json.loads(self.request.body or b"{}")
        except ValueError as e:
            raise web.HTTPError(400, f"the body is not JSON: {e}") from e

    def _path(self) -> str:
        path = self.get_query_argument("path", "")
        if not path:
            raise web.HTTPError(400, "pass the notebook's path: ?path=<notebook path>")
        return path


class ModelsHandler(_Base):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        # the catalogue's status reads package metadata and the disk: off the event loop
        models = await asyncio.get_running_loop().run_in_executor(None, self.chat.models)
        self.finish(json.dumps(models))


class SettingsHandler(_Base):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(json.dumps(self.chat.settings()))

    @web.authenticated
    @authorized
    async def put(self) -> None:
        try:
            values = self.chat.update_settings(self._json_body())
        except ChatError as e:
            raise web.HTTPError(400, str(e)) from e
        self.finish(json.dumps(values))


class HistoryHandler(_Base):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(json.dumps({"messages": self.chat.history.load(self._path())}))

    @web.authenticated
    @authorized
    async def delete(self) -> None:
        self.chat.history.clear(self._path())
        self.set_status(204)
        self.finish()


class StopHandler(_Base):
    """``POST qcoder/chat/{id}/stop``: for clients without the socket."""

    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        if not self.chat.stop(job_id):
            raise web.HTTPError(404, f"no request {job_id!r} is queued or running")
        self.set_status(204)
        self.finish()


class ChatWebSocket(WebSocketMixin, WebSocketHandler, JupyterHandler):
    """``qcoder/chat``: ``ask``/``stop`` in, ``queued``/``started``/``token``/``done``/
    ``stopped``/``error`` out (each with the request's ``id``)."""

    auth_resource = AUTH_RESOURCE

    def set_default_headers(self) -> None:
        """No API headers on a websocket (as Jupyter's kernel socket)."""

    @property
    def chat(self) -> ChatService:
        return self.settings[SETTINGS_KEY]

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        user = self.current_user
        allowed = await ensure_async(self.authorizer.is_authorized(self, user, "execute",
                                                                   AUTH_RESOURCE))
        if not allowed:
            raise web.HTTPError(403)
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:
        super().open(*args, **kwargs)
        self._open = True

    def _send(self, event: dict[str, Any]) -> None:
        if not getattr(self, "_open", False):
            return
        try:
            self.write_message(json.dumps(event))
        except WebSocketClosedError:
            self._open = False

    def on_message(self, message: str | bytes) -> None:
        try:
            msg = json.loads(message)
        except ValueError as e:
            self._send({"type": "error", "id": None,
                        "message": f"the message is not JSON ({e}); send "
                                   '{"type": "ask", "id": ..., "request": ...}'})
            return
        if not isinstance(msg, dict):
            self._send({"type": "error", "id": None,
                        "message": "send a JSON object with a \"type\": ask or stop"})
            return
        kind, job_id = msg.get("type"), msg.get("id")
        if kind == "ask":
            try:
                self.chat.submit(msg, self._send, owner=self)
            except ChatError as e:
                self._send({"type": "error", "id": job_id, "message": str(e)})
        elif kind == "stop":
            if not self.chat.stop(str(job_id)):
                self._send({"type": "error", "id": job_id,
                            "message": f"no request {job_id!r} is queued or running"})
        else:
            self._send({"type": "error", "id": job_id,
                        "message": f"unknown message type {kind!r}; types: ask, stop"})

    def on_close(self) -> None:
        self._open = False
        self.chat.drop_owner(self)


def setup_handlers(serverapp: Any) -> ChatService:
    """Mount the endpoints and create the one ChatService of this server."""
    web_app = serverapp.web_app
    service = ChatService(kernel_manager=getattr(serverapp, "kernel_manager", None))
    web_app.settings[SETTINGS_KEY] = service
    base = url_path_join(web_app.settings["base_url"], "qcoder")
    web_app.add_handlers(".*$", [
        (url_path_join(base, "models"), ModelsHandler),
        (url_path_join(base, "settings"), SettingsHandler),
        (url_path_join(base, "history"), HistoryHandler),
        (url_path_join(base, "chat"), ChatWebSocket),
        (url_path_join(base, "chat", r"([^/]+)", "stop"), StopHandler),
    ])
    return service
