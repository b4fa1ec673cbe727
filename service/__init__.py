"""The ASA-SNN inference service: FastAPI app, streaming sessions, scheduler, engine, client.

Layers: routes (``service.api``) -> sessions (``service.session``) -> engine and scheduler
(``service.engine``, ``service.scheduler``) -> step runner (``models.runtime``). Nothing here imports
``training``.
"""

from service.config import Settings, load_settings

__all__ = ["Settings", "create_app", "load_settings"]


def __getattr__(name: str):  # create_app pulls in FastAPI; import it only when asked for
    if name == "create_app":
        from service.main import create_app

        return create_app
    raise AttributeError(name)
