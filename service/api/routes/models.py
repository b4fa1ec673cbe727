"""Model cards of the served models."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import AuthDep, ReadyDep, lookup_model
from service.schemas import ModelCardPublic, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[AuthDep])


@router.get("", response_model=ModelList)
async def list_models(state: ReadyDep) -> ModelList:
    reg = state.registry
    assert reg is not None
    models = [state.summary(e) for e in reg.entries.values() if e.loaded]
    return ModelList(default=reg.default_name, models=models)


@router.get("/{name}", response_model=ModelCardPublic, responses={404: {"description": "unknown model"}})
async def get_model(name: str, state: ReadyDep) -> ModelCardPublic:
    entry = lookup_model(state, name)
    return ModelCardPublic(**state.summary(entry).model_dump(), card=entry.runner.card.to_dict())
