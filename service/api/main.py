"""All routers of the app."""

from fastapi import APIRouter

from service.api.routes import classify, health, metrics, models, sessions, watch, ws

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(models.router)
api_router.include_router(classify.router)
api_router.include_router(metrics.router)
api_router.include_router(ws.router)
api_router.include_router(sessions.router)
api_router.include_router(watch.router)
