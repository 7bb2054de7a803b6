"""The chat as a Jupyter Server ``ExtensionApp``: mounts the endpoints, and on server stop
cancels every generation (a module extension gets no stop hook, and a generation left running
in the worker thread would hold the server's exit until it finished)."""

from __future__ import annotations

from typing import Any

from jupyter_server.extension.application import ExtensionApp

from qcoder_ds.server.handlers import SETTINGS_KEY, setup_handlers


class ChatExtension(ExtensionApp):
    """``qcoder_ds.server``: the sidebar chat's server side (docs/chat.md)."""

    name = "qcoder"
    load_other_extensions = True

    def initialize_handlers(self) -> None:
        setup_handlers(self.serverapp)
        self.log.info("qcoder chat: endpoints under %sqcoder/", self.serverapp.base_url)

    def current_activity(self) -> list[dict[str, Any]] | None:
        """Queued or running answers count as activity (an idle-culling server waits)."""
        service = self.serverapp.web_app.settings.get(SETTINGS_KEY)
        if service is None or not (service.queue or service.running):
            return None
        return [{"qcoder": "answering", "requests": len(service.queue) + 1}]

    async def stop_extension(self) -> None:
        service = self.serverapp.web_app.settings.get(SETTINGS_KEY)
        if service is not None:
            await service.aclose()
