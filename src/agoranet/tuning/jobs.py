"""Fine-tuning jobs a node sells: uploaded training files, a queue, a worker thread.

Each job trains a LoRA adapter on a fresh copy of the node's base model (so
serving is never disturbed), records events as it goes, and keeps the finished
adapter for its owner alone: only the owner can read the job and download the
adapter, then serve it anywhere (content-addressed, ``BASE@adapter:<sha256>``).
State lives in memory and on disk under ``store``; jobs do not survive a restart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agoranet.errors import ModelNotFoundError, TuningError
from agoranet.tuning.adapter import adapter_model_name, pack_adapter
from agoranet.tuning.config import TuneConfig, default_learning_rate
from agoranet.tuning.data import Example, parse_jsonl

if TYPE_CHECKING:
    from agoranet.tuning.lora import TuneReport

__all__ = ["FineTuneJob", "JobEvent", "JobManager", "StoredFile", "Trainer", "local_trainer"]

Status = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
Trainer = Callable[[list[Example], Path, TuneConfig, str, Callable[[int, int, float], None]],
                   "TuneReport"]


@dataclass(frozen=True)
class StoredFile:
    id: str
    owner: str
    filename: str
    bytes: int
    created_at: int
    purpose: str
    sha256: str
    examples: list[Example] = field(repr=False)


@dataclass(frozen=True)
class JobEvent:
    id: str
    created_at: int
    level: str
    message: str
    type: str = "message"
    data: dict[str, Any] | None = None


@dataclass
class FineTuneJob:
    id: str
    owner: str
    model: str
    training_file: str
    created_at: int
    config: TuneConfig
    seed: int
    status: Status = "queued"
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    charged: int | None = None
    error: dict[str, str | None] | None = None
    adapter_dir: Path | None = None
    events: list[JobEvent] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    def log(self, message: str, *, level: str = "info", kind: str = "message",
            data: dict[str, Any] | None = None) -> None:
        self.events.append(JobEvent(f"ftevent-{uuid.uuid4().hex[:24]}", int(time.time()), level,
                                    message, kind, data))


class _Cancelled(Exception):
    pass


class JobManager:
    """Files, jobs and the single worker thread that trains them in order."""

    def __init__(self, base_name: str, store: Path, trainer: Trainer, *,
                 price_per_million: int = 0, base_parameters: int = 0) -> None:
        self.base_name = base_name
        self.store = store
        self.price_per_million = price_per_million
        self._base_parameters = base_parameters
        self._trainer = trainer
        self._files: dict[str, StoredFile] = {}
        self._jobs: dict[str, FineTuneJob] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        store.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._work, name="fine-tuning", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ files

    def add_file(self, owner: str, filename: str, data: bytes, purpose: str) -> StoredFile:
        if purpose != "fine-tune":
            raise TuningError(f"purpose must be 'fine-tune', got {purpose!r}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TuningError(f"{filename} is not UTF-8 text") from exc
        examples = parse_jsonl(text)
        stored = StoredFile(f"file-{uuid.uuid4().hex[:24]}", owner, filename, len(data),
                            int(time.time()), purpose, hashlib.sha256(data).hexdigest(), examples)
        (self.store / f"{stored.id}.jsonl").write_bytes(data)
        with self._lock:
            self._files[stored.id] = stored
        return stored

    def get_file(self, owner: str, file_id: str) -> StoredFile:
        with self._lock:
            found = self._files.get(file_id)
        if found is None or found.owner != owner:
            raise ModelNotFoundError(f"No such File object: {file_id}", param="file_id")
        return found

    # ------------------------------------------------------------------- jobs

    def create_job(self, owner: str, model: str, training_file: str,
                   hyperparameters: dict[str, Any], seed: int | None) -> FineTuneJob:
        if model != self.base_name:
            raise ModelNotFoundError(
                f"this node fine-tunes '{self.base_name}', not '{model}'", param="model"
            )
        self.get_file(owner, training_file)
        config = _config(hyperparameters, seed or 0, self._base_parameters)
        job = FineTuneJob(f"ftjob-{uuid.uuid4().hex[:24]}", owner, model, training_file,
                          int(time.time()), config, seed or 0)
        job.log(f"Created fine-tuning job: {job.id}")
        with self._lock:
            self._jobs[job.id] = job
        self._queue.put(job.id)
        return job

    def get_job(self, owner: str, job_id: str) -> FineTuneJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            raise ModelNotFoundError(f"No such fine-tuning job: {job_id}", param="job_id")
        return job

    def list_jobs(self, owner: str) -> list[FineTuneJob]:
        with self._lock:
            return [j for j in self._jobs.values() if j.owner == owner]

    def cancel(self, owner: str, job_id: str) -> FineTuneJob:
        job = self.get_job(owner, job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            raise TuningError(f"job {job_id} has already ended ({job.status})")
        job.cancel_requested.set()
        if job.status == "queued":
            self._end(job, "cancelled")
        return job

    def adapter_archive(self, owner: str, job_id: str) -> bytes:
        job = self.get_job(owner, job_id)
        if job.status != "succeeded" or job.adapter_dir is None:
            raise TuningError(f"job {job_id} has no adapter yet (status {job.status})")
        return pack_adapter(job.adapter_dir)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    # ----------------------------------------------------------------- worker

    def _end(self, job: FineTuneJob, status: Status) -> None:
        job.status = status
        job.finished_at = int(time.time())

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            with self._lock:
                job = self._jobs[job_id]
            if job.status != "queued":
                continue
            self._run(job)

    def _run(self, job: FineTuneJob) -> None:
        job.status = "running"
        job.log("Fine-tuning job started")
        source = self._files[job.training_file]
        out = self.store / job.id

        def progress(step: int, total: int, loss: float) -> None:
            if job.cancel_requested.is_set():
                raise _Cancelled
            job.log(f"Step {step}/{total}: training loss={loss:.4f}", kind="metrics",
                    data={"step": step, "total_steps": total, "train_loss": loss})

        try:
            report = self._trainer(source.examples, out, job.config, source.sha256, progress)
        except _Cancelled:
            job.log("Fine-tuning job cancelled")
            self._end(job, "cancelled")
            return
        except TuningError as exc:
            job.error = {"code": "invalid_training_file", "message": str(exc), "param": None}
            job.log(f"Fine-tuning job failed: {exc}", level="error")
            self._end(job, "failed")
            return
        job.adapter_dir = out
        job.trained_tokens = report.trained_tokens
        job.charged = -(-report.trained_tokens * self.price_per_million // 1_000_000)
        job.fine_tuned_model = adapter_model_name(self.base_name, report.adapter_id)
        if report.heldout_before is not None and report.heldout_after is not None:
            job.log(f"Held-out loss {report.heldout_before:.4f} -> {report.heldout_after:.4f}")
        job.log(f"New fine-tuned model created: {job.fine_tuned_model}")
        job.log("The job has successfully completed")
        self._end(job, "succeeded")


def local_trainer(base_dir: Path) -> Trainer:
    """A trainer that loads a fresh copy of the base model from ``base_dir`` for each job."""

    def train(examples: list[Example], out: Path, config: TuneConfig, data_sha256: str,
              progress: Callable[[int, int, float], None]) -> TuneReport:
        from agoranet.engines.hf import load_model
        from agoranet.tuning.lora import train_adapter

        return train_adapter(examples, load_model(str(base_dir)), out, config,
                             data_sha256=data_sha256, progress=progress)

    return train


def _config(hyperparameters: dict[str, Any], seed: int, parameters: int) -> TuneConfig:
    """OpenAI's hyperparameters (``"auto"`` or a number) as our training knobs."""

    def pick(name: str, kind: type[int] | type[float]) -> Any:
        value = hyperparameters.get(name, "auto")
        if value in ("auto", None):
            return None
        try:
            number = kind(value)
        except (TypeError, ValueError) as exc:
            raise TuningError(f"hyperparameters.{name} must be 'auto' or a number") from exc
        if number <= 0:
            raise TuningError(f"hyperparameters.{name} must be positive")
        return number

    epochs = pick("n_epochs", int)
    batch = pick("batch_size", int)
    multiplier = pick("learning_rate_multiplier", float)
    config = TuneConfig(epochs=epochs, seed=seed)
    if batch is not None:
        config = dataclasses.replace(config, batch_size=batch)
    if multiplier is not None:
        config = dataclasses.replace(
            config, learning_rate=default_learning_rate(parameters) * multiplier
        )
    return config
