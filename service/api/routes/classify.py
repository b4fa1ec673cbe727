"""``POST /v1/classify``: whole recordings in, label / probabilities / spike rates / energy out.

Uploads are multipart files (AEDAT4, ``.npy``/``.npz``, or the 13-byte wire format). The options
are form fields, the same as a stream's ``start`` message. The recording runs through the same
binner, step runner and readout as a live stream (:func:`service.recordings.classify_events`).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile, status

from models.events.types import MAX_T_US, SensorSize
from service.api.deps import AuthDep, ReadyDep, lookup_model
from service.decoding import Binning, RecordingError
from service.protocol import ProtocolError
from service.recordings import classify_events, sniff_format
from service.schemas import (
    ClassifyBatchResult,
    ClassifyResult,
    ErrorResponse,
    OutputOptions,
    ReadoutOptions,
    SensorSpec,
)
from service.state import ServiceState

router = APIRouter(prefix="/v1/classify", tags=["classify"], dependencies=[AuthDep])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong API key", "model": ErrorResponse},
    404: {"description": "unknown model", "model": ErrorResponse},
    413: {"description": "upload or recording too large", "model": ErrorResponse},
    415: {"description": "not an event recording", "model": ErrorResponse},
    422: {"description": "unreadable recording, a decode that overran its limits, or bad options", "model": ErrorResponse},
}


class Options:
    """The form fields shared by both routes."""

    def __init__(
        self,
        model: Annotated[str | None, Form(description="model name; default: the default model")] = None,
        model_query: Annotated[
            str | None, Query(alias="model", description="the model name as a query parameter instead")
        ] = None,
        format: Annotated[
            Literal["aedat4", "npy", "npz", "wire"] | None, Form(description="skip detection")
        ] = None,
        sensor_width: Annotated[int | None, Form(ge=1, le=65535)] = None,
        sensor_height: Annotated[int | None, Form(ge=1, le=65535)] = None,
        dt_us: Annotated[int | None, Form(ge=100, le=10_000_000)] = None,
        ds: Annotated[int | None, Form(ge=1, le=1024)] = None,
        t_start_us: Annotated[int | None, Form(ge=0, le=MAX_T_US)] = None,
        readout_mode: Annotated[Literal["horizon", "ema"], Form()] = "horizon",
        readout_horizon: Annotated[int | None, Form(ge=1, le=100_000)] = None,
        readout_alpha: Annotated[float | None, Form(gt=0, le=1)] = None,
        top_k: Annotated[int, Form(ge=1, le=1000)] = 3,
        include_steps: Annotated[bool, Form(description="add every timestep's prediction")] = False,
    ) -> None:
        if model is not None and model_query is not None and model != model_query:
            raise _error(422, "bad_option", f"model {model!r} in the form and {model_query!r} in the query differ")
        self.model, self.format = model or model_query, format
        self.sensor = None
        if (sensor_width is None) != (sensor_height is None):
            raise _error(422, "bad_option", "give both sensor_width and sensor_height, or neither")
        if sensor_width is not None:
            self.sensor = SensorSpec(width=sensor_width, height=sensor_height)
        self.dt_us, self.ds, self.t_start_us = dt_us, ds, t_start_us
        self.readout = ReadoutOptions(mode=readout_mode, horizon=readout_horizon, alpha=readout_alpha)
        self.output = OutputOptions(top_k=top_k)
        self.include_steps = include_steps


def _error(code_status: int, code: str, message: str) -> HTTPException:
    return HTTPException(code_status, detail={"code": code, "message": message})


async def _read(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes; 413 beyond ``limit`` (checked on the declared size and on what arrives)."""
    name = upload.filename or "upload"
    if upload.size is not None and upload.size > limit:
        raise _error(
            413,
            "upload_too_large",
            f"{name}: {upload.size} bytes exceeds the limit of {limit} bytes per recording",
        )
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise _error(413, "upload_too_large", f"{name}: exceeds the limit of {limit} bytes per recording")
    return data


async def _classify_one(state: ServiceState, upload: UploadFile, opts: Options) -> ClassifyResult:
    entry = lookup_model(state, opts.model)
    s = state.settings
    name = upload.filename or "upload"
    data = await _read(upload, s.max_upload_bytes)
    assert entry.runner is not None and state.decoder is not None and state.engine is not None
    card = entry.runner.card
    try:
        fmt = sniff_format(data[:16], upload.filename, opts.format)
        binning = Binning(opts.dt_us or int(card.dt_us), opts.t_start_us, s.max_gap_steps)
        sensor = SensorSize(opts.sensor.width, opts.sensor.height) if opts.sensor else None
        model_sensor = SensorSize(card.sensor.width, card.sensor.height)
        # decoded, checked and counted in a child process: a hostile file cannot reach the streams
        decoded = await asyncio.to_thread(
            state.decoder.decode, data, upload.filename, fmt, binning, sensor, model_sensor
        )
    except RecordingError as e:
        raise _error(e.status, e.code, e.message) from None
    del data
    file_sensor = decoded.sensor
    try:
        cfg = state.session_config(
            entry,
            sensor=opts.sensor or (SensorSpec(**vars(file_sensor)) if file_sensor else None),
            dt_us=opts.dt_us,
            ds=opts.ds,
            t_start_us=opts.t_start_us,
            readout=opts.readout,
            output=opts.output,
            live=False,
        )
    except ProtocolError as e:
        raise _error(422, e.code, e.message) from None
    if decoded.steps > s.max_recording_steps:
        raise _error(
            413,
            "recording_too_long",
            f"{name}: {decoded.steps} timesteps of {cfg.binner.dt_us} us exceed the limit of {s.max_recording_steps}",
        )
    try:
        result = await classify_events(state.engine, state.worker(entry), cfg, decoded.events, opts.include_steps)
    except ProtocolError as e:
        raise _error(422, e.code, f"{name}: {e.message}") from None
    if result["label"] is not None:
        state.metrics.classifications.labels(entry.name, result["label"]).inc()
    return ClassifyResult(filename=upload.filename, **result)


@router.post("", response_model=ClassifyResult, responses=_ERRORS)
async def classify(
    state: ReadyDep,
    file: Annotated[UploadFile, File(description="AEDAT4, .npy/.npz or wire-format events")],
    opts: Annotated[Options, Depends()],
) -> ClassifyResult:
    """Classify one recording."""
    return await _classify_one(state, file, opts)


@router.post("/batch", response_model=ClassifyBatchResult, responses=_ERRORS)
async def classify_batch(
    state: ReadyDep,
    files: Annotated[list[UploadFile], File(description="several recordings, classified side by side")],
    opts: Annotated[Options, Depends()],
) -> ClassifyBatchResult:
    """Classify several recordings; they run as parallel streams, batched together."""
    if len(files) > state.settings.max_batch_files:
        raise _error(
            status.HTTP_413_CONTENT_TOO_LARGE,
            "too_many_files",
            f"{len(files)} files; at most {state.settings.max_batch_files} per request",
        )
    results = await asyncio.gather(*(_classify_one(state, f, opts) for f in files))
    return ClassifyBatchResult(
        model=results[0].model if results else lookup_model(state, opts.model).name, results=list(results)
    )
