"""All routers of the app."""

from fastapi import APIRouter

from service.api.routes import classify, health, metrics, models, ws

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(models.router)
api_router.include_router(classify.router)
api_router.include_router(metrics.router)
api_router.include_router(ws.router)
