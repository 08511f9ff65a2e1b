"""Fine-tuning jobs a node sells: uploaded training files, a queue, a worker thread.

Each job trains a LoRA adapter on a fresh copy of the node's base model (so
serving is never disturbed), records events as it goes, and keeps the finished
adapter for its owner alone: only the owner can read the job and download the
adapter, then serve it anywhere (content-addressed, ``BASE@adapter:<sha256>``).

**Pricing.** Before a job exists its training is counted with the model's own
tokenizer (:mod:`agoranet.tuning.sizing`): the trained tokens (assistant tokens
of the training split) times the epochs. At the offer's training price that is
the job's maximum (:attr:`JobPlan.amount`), which is also exactly what a job
that trains to the end costs. A job that ends early is charged pro rata by the
optimiser steps it completed (:meth:`TrainingSize.tokens_after`), never more.

**Payment** (on a paid node) goes through a :class:`Billing`, which the node
implements over its x402 ledger (:mod:`agoranet.node.job_payments`): the
buyer's voucher for the maximum is accepted and held in the ledger *before*
the job is created; while the job trains, running receipts for the tokens
trained so far are persisted and shown in the job (about one per tenth of the
steps); when it ends, the hold is charged with a final signed receipt: the
whole training when it succeeded, what it trained when it was cancelled
(nothing, with a zero receipt, if it never started), and its last running
receipt (or nothing) when it failed. The job's status is written before it is
charged, so a crash between the two costs the node, never the buyer.

**Persistence.** Files, jobs and events live in a SQLite file in ``store``
(:class:`~agoranet.tuning.job_store.JobStore`), adapters and uploads next to
it. :meth:`JobManager.start` loads them: finished jobs stay listable with their
adapters; a job that was queued or running when the node stopped is *failed*
with the error code ``node_restarted`` (training is not resumed: the node's
ledger released the job's hold at start-up, charging the last running receipt
the buyer could see, else nothing, and the job records that outcome). A node
that shuts down gracefully fails its running job the same way after the
current step (``node_stopped``), and its queued jobs at the next start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from agoranet.errors import InvalidRequestError, ModelNotFoundError, TuningError
from agoranet.market import training_cost
from agoranet.tuning.adapter import adapter_model_name, pack_adapter
from agoranet.tuning.config import TuneConfig, default_learning_rate
from agoranet.tuning.data import Example, parse_jsonl
from agoranet.tuning.job_store import JobStore
from agoranet.tuning.sizing import Sizer, TrainingSize

if TYPE_CHECKING:
    from agoranet.tuning.lora import TuneReport

__all__ = ["ENDED", "Billing", "FineTuneJob", "JobEvent", "JobManager", "JobPlan", "StoredFile",
           "Trainer", "local_trainer"]

logger = logging.getLogger(__name__)

Status = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
ENDED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
Trainer = Callable[[list[Example], Path, TuneConfig, str, Callable[[int, int, float], None]],
                   "TuneReport"]
RECEIPTS_PER_JOB = 10  # running receipts while a job trains (one per tenth of its steps)


@dataclass(frozen=True)
class StoredFile:
    id: str
    owner: str
    filename: str
    bytes: int
    created_at: int
    purpose: str
    sha256: str

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class JobEvent:
    id: str
    created_at: int
    level: str
    message: str
    type: str = "message"
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobPlan:
    """A checked job request, counted and priced, not yet created."""

    owner: str
    model: str
    training_file: str
    config: TuneConfig
    seed: int
    size: TrainingSize
    amount: int  # the most it can cost: the whole training at the offer's price


@dataclass
class FineTuneJob:
    id: str
    owner: str
    model: str
    training_file: str
    created_at: int
    config: TuneConfig
    seed: int
    size: TrainingSize | None = None
    max_charge: int = 0
    status: Status = "queued"
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    trained_steps: int = 0
    charged: int | None = None
    error: dict[str, str | None] | None = None
    adapter_dir: Path | None = None
    # The x402 payment: request id, channel, max, status (held/charged/released) and the
    # latest payment response with its signed receipt (see agoranet.node.job_payments).
    payment: dict[str, Any] | None = None
    events: list[JobEvent] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    def record(self) -> dict[str, Any]:
        """The job as a JSON document (events and the cancel flag aside)."""
        return {
            "id": self.id, "owner": self.owner, "model": self.model,
            "training_file": self.training_file, "created_at": self.created_at,
            "config": {**dataclasses.asdict(self.config),
                       "target_modules": self.config.target_modules
                       if isinstance(self.config.target_modules, str)
                       else list(self.config.target_modules)},
            "seed": self.seed, "size": dataclasses.asdict(self.size) if self.size else None,
            "max_charge": self.max_charge, "status": self.status,
            "finished_at": self.finished_at, "fine_tuned_model": self.fine_tuned_model,
            "trained_tokens": self.trained_tokens, "trained_steps": self.trained_steps,
            "charged": self.charged, "error": self.error,
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
            "payment": self.payment,
        }

    @classmethod
    def from_record(cls, data: dict[str, Any], events: list[JobEvent]) -> FineTuneJob:
        size = data.get("size")
        return cls(
            id=data["id"], owner=data["owner"], model=data["model"],
            training_file=data["training_file"], created_at=data["created_at"],
            config=TuneConfig(**data["config"]), seed=data["seed"],
            size=TrainingSize(**size) if size else None, max_charge=data["max_charge"],
            status=data["status"], finished_at=data["finished_at"],
            fine_tuned_model=data["fine_tuned_model"], trained_tokens=data["trained_tokens"],
            trained_steps=data["trained_steps"], charged=data["charged"], error=data["error"],
            adapter_dir=Path(data["adapter_dir"]) if data["adapter_dir"] else None,
            payment=data["payment"], events=events,
        )


class Billing(Protocol):
    """How a paid node charges a job's payment hold; each call persists the outcome in the
    node's ledger and returns the job's new payment record."""

    def running(self, job: FineTuneJob, tokens: int) -> dict[str, Any]:
        """A running receipt for ``tokens`` trained so far (persisted before it is shown)."""
        ...

    def charge(self, job: FineTuneJob, tokens: int) -> dict[str, Any]:
        """The final charge for ``tokens`` trained, with its signed receipt."""
        ...

    def release(self, job: FineTuneJob) -> dict[str, Any]:
        """The job failed: charged its last running receipt, else nothing."""
        ...

    def recovered(self, job: FineTuneJob) -> dict[str, Any]:
        """After a restart: what the ledger's recovery made of the job's hold."""
        ...


class _Cancelled(Exception):
    pass


class _Stopped(Exception):
    pass


class JobManager:
    """Files, jobs and the single worker thread that trains them in order.

    Construct it, then :meth:`start` it (with the node's :class:`Billing`, if paid):
    that loads the store, fails the jobs a previous process left unfinished, and
    starts the worker.
    """

    def __init__(self, base_name: str, store: Path, trainer: Trainer, sizer: Sizer, *,
                 price_per_million: int = 0, base_parameters: int = 0) -> None:
        self.base_name = base_name
        self.store = store
        self.price_per_million = price_per_million
        self.billing: Billing | None = None
        # Called with each job that trained to the end, before it is marked succeeded:
        # the node serves its adapter under ``fine_tuned_model`` from then on.
        self.on_trained: Callable[[FineTuneJob], None] | None = None
        self._base_parameters = base_parameters
        self._trainer = trainer
        self._sizer = sizer
        self._files: dict[str, StoredFile] = {}
        self._jobs: dict[str, FineTuneJob] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        store.mkdir(parents=True, exist_ok=True)
        self._db = JobStore(store / "jobs.sqlite")
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    def start(self, billing: Billing | None = None) -> None:
        """Load the store, settle what a previous process left, start the worker."""
        if self._thread is not None:
            return
        self.billing = billing
        for record in self._db.files():
            stored = StoredFile(**record)
            self._files[stored.id] = stored
        for record in self._db.jobs():
            events = [JobEvent(**e) for e in self._db.events(record["id"])]
            job = FineTuneJob.from_record(record, events)
            self._jobs[job.id] = job
            self._recover(job)
        self._thread = threading.Thread(target=self._work, name="fine-tuning", daemon=True)
        self._thread.start()

    def _recover(self, job: FineTuneJob) -> None:
        if job.status not in ENDED:
            was = job.status
            job.error = {"code": "node_restarted", "param": None,
                         "message": f"the node restarted while the job was {was}; it was "
                                    "charged only what it had receipted before"}
            job.status, job.finished_at = "failed", int(time.time())
            self._db.put_job(job.record())
            self._log(job, f"Fine-tuning job failed: the node restarted while it was {was}",
                      level="error")
        if job.payment is not None and job.payment.get("status") == "held":
            if self.billing is None:
                job.payment = {**job.payment, "status": "unknown"}
            else:
                job.payment = self.billing.recovered(job)
            job.charged = _charged(job.payment)
            self._db.put_job(job.record())

    def _started(self) -> None:
        if self._thread is None:
            raise TuningError("the fine-tuning service has not been started")

    # ------------------------------------------------------------------ files

    def add_file(self, owner: str, filename: str, data: bytes, purpose: str) -> StoredFile:
        self._started()
        if purpose != "fine-tune":
            raise TuningError(f"purpose must be 'fine-tune', got {purpose!r}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TuningError(f"{filename} is not UTF-8 text") from exc
        parse_jsonl(text)
        stored = StoredFile(f"file-{uuid.uuid4().hex[:24]}", owner, filename, len(data),
                            int(time.time()), purpose, hashlib.sha256(data).hexdigest())
        (self.store / f"{stored.id}.jsonl").write_bytes(data)
        self._db.put_file(stored.record())
        with self._lock:
            self._files[stored.id] = stored
        return stored

    def get_file(self, owner: str, file_id: str) -> StoredFile:
        with self._lock:
            found = self._files.get(file_id)
        if found is None or found.owner != owner:
            raise ModelNotFoundError(f"No such File object: {file_id}", param="file_id")
        return found

    def _examples(self, stored: StoredFile) -> list[Example]:
        try:
            raw = (self.store / f"{stored.id}.jsonl").read_bytes()
        except OSError as exc:
            raise TuningError(f"training file {stored.id} is gone: {exc.strerror}") from exc
        return parse_jsonl(raw.decode("utf-8"))

    # ------------------------------------------------------------------- jobs

    def plan(self, owner: str, model: str, training_file: str,
             hyperparameters: dict[str, Any], seed: object) -> JobPlan:
        """Check a job request and count its training (tokenises the file: run off the loop)."""
        self._started()
        if model != self.base_name:
            raise ModelNotFoundError(
                f"this node fine-tunes '{self.base_name}', not '{model}'", param="model"
            )
        stored = self.get_file(owner, training_file)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise InvalidRequestError("seed must be an integer", param="seed")
        config = _config(hyperparameters, seed or 0, self._base_parameters)
        size = self._sizer(self._examples(stored), config)
        if size.tokens <= 0:
            raise TuningError("the training file has no assistant tokens to train on")
        return JobPlan(owner, model, training_file, config, seed or 0, size,
                       training_cost(size.tokens, self.price_per_million))

    def create_job(self, plan: JobPlan, payment: dict[str, Any] | None = None) -> FineTuneJob:
        """Create and queue the job of ``plan``, paid by ``payment`` (its hold already
        persisted in the ledger); the job is on disk before this returns."""
        self._started()
        job = FineTuneJob(f"ftjob-{uuid.uuid4().hex[:24]}", plan.owner, plan.model,
                          plan.training_file, int(time.time()), plan.config, plan.seed,
                          size=plan.size, max_charge=plan.amount, payment=payment)
        self._db.put_job(job.record())
        self._log(job, f"Created fine-tuning job: {job.id}")
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

    def all_jobs(self) -> list[FineTuneJob]:
        """Every owner's jobs (for the node's operator)."""
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, owner: str, job_id: str) -> FineTuneJob:
        job = self.get_job(owner, job_id)
        with self._lock:
            if job.status in ENDED:
                raise TuningError(f"job {job_id} has already ended ({job.status})")
            job.cancel_requested.set()
            if job.status == "queued":  # the worker skips it; it trained nothing
                self._log(job, "Fine-tuning job cancelled before it started")
                self._finish(job, "cancelled", 0)
        return job

    def adapter_archive(self, owner: str, job_id: str) -> bytes:
        job = self.get_job(owner, job_id)
        if job.status != "succeeded" or job.adapter_dir is None:
            raise TuningError(f"job {job_id} has no adapter yet (status {job.status})")
        return pack_adapter(job.adapter_dir)

    def close(self) -> None:
        """Stop: a running job fails after its current step (charged its last running
        receipt, as after a restart); queued jobs fail when the node next starts."""
        self._closing.set()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            if self._thread.is_alive():  # a long step: it ends with the process
                return
        self._db.close()

    # ----------------------------------------------------------------- worker

    def _log(self, job: FineTuneJob, message: str, *, level: str = "info",
             kind: str = "message", data: dict[str, Any] | None = None) -> None:
        event = JobEvent(f"ftevent-{uuid.uuid4().hex[:24]}", int(time.time()), level, message,
                         kind, data)
        job.events.append(event)
        self._db.add_event(job.id, dataclasses.asdict(event))

    def _finish(self, job: FineTuneJob, status: Status, tokens: int | None) -> None:
        """End ``job`` with ``status``, charged for ``tokens`` trained (``None``: it failed,
        and pays its last running receipt, else nothing; a free job costs nothing).

        The final status is on disk before any charge, so a crash between the two costs
        the node, never the buyer; readers see it only together with what it was charged
        (the status is set last), never an ended job whose charge is not yet known."""
        job.finished_at = int(time.time())
        self._db.put_job({**job.record(), "status": status})
        if self.billing is not None and job.payment is not None:
            if tokens is None:
                job.payment = self.billing.release(job)
            else:
                job.trained_tokens = tokens
                job.payment = self.billing.charge(job, tokens)
            job.charged = _charged(job.payment)
        else:
            if tokens is not None:
                job.trained_tokens = tokens
            job.charged = 0
        job.status = status
        self._db.put_job(job.record())

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None and not self._closing.is_set():
            with self._lock:
                job = self._jobs[job_id]
                if job.status != "queued":
                    continue
                job.status = "running"
            try:
                self._run(job)
            except Exception:  # the worker thread outlives any one job's failure
                logger.exception("fine-tuning job %s failed", job.id)
                if job.status == "running":
                    job.error = {"code": "training_failed", "param": None,
                                 "message": "training failed on the node"}
                    self._finish(job, "failed", None)

    def _run(self, job: FineTuneJob) -> None:
        self._db.put_job(job.record())
        self._log(job, "Fine-tuning job started")
        size = job.size
        assert size is not None
        source = self._files[job.training_file]
        out = self.store / job.id
        receipted = 0  # tenths of the steps receipted so far

        def progress(step: int, total: int, loss: float) -> None:
            nonlocal receipted
            job.trained_steps = step
            if self._closing.is_set():
                raise _Stopped
            if job.cancel_requested.is_set():
                raise _Cancelled
            self._log(job, f"Step {step}/{total}: training loss={loss:.4f}", kind="metrics",
                      data={"step": step, "total_steps": total, "train_loss": loss})
            tenth = step * RECEIPTS_PER_JOB // max(total, 1)
            if tenth > receipted and step < total and self.billing is not None and \
                    job.payment is not None:
                receipted = tenth
                job.payment = self.billing.running(job, size.tokens_after(step))
                self._db.put_job(job.record())

        try:
            report = self._trainer(self._examples(source), out, job.config, source.sha256,
                                   progress)
        except _Stopped:
            job.error = {"code": "node_stopped", "param": None,
                         "message": "the node shut down while the job was running; it was "
                                    "charged only what it had receipted before"}
            self._log(job, "Fine-tuning job failed: the node shut down", level="error")
            self._finish(job, "failed", None)
            return
        except _Cancelled:
            self._log(job, f"Fine-tuning job cancelled after step {job.trained_steps}")
            self._finish(job, "cancelled", size.tokens_after(job.trained_steps))
            return
        except TuningError as exc:
            job.error = {"code": "invalid_training_file", "message": str(exc), "param": None}
            self._log(job, f"Fine-tuning job failed: {exc}", level="error")
            self._finish(job, "failed", None)
            return
        job.adapter_dir = out
        job.trained_steps = report.steps
        job.fine_tuned_model = adapter_model_name(self.base_name, report.adapter_id)
        if report.heldout_before is not None and report.heldout_after is not None:
            self._log(job, f"Held-out loss {report.heldout_before:.4f} -> "
                           f"{report.heldout_after:.4f}")
        self._log(job, f"New fine-tuned model created: {job.fine_tuned_model}")
        if self.on_trained is not None:
            try:
                self.on_trained(job)
            except Exception as exc:  # the adapter is still the owner's, to download
                logger.exception("cannot serve the adapter of job %s", job.id)
                self._log(job, f"The node could not serve the fine-tuned model: {exc}",
                          level="warn")
        self._log(job, "The job has successfully completed")
        self._finish(job, "succeeded", min(report.trained_tokens, size.tokens))


def _charged(payment: dict[str, Any]) -> int:
    """What a payment record's final receipt charged (0 when released without one)."""
    if payment.get("status") != "charged":
        return 0
    response = payment.get("response") or {}
    return int((response.get("extra") or {}).get("chargedAmount", 0))


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

    unknown = set(hyperparameters) - {"n_epochs", "batch_size", "learning_rate_multiplier"}
    if unknown:
        raise TuningError(f"unsupported hyperparameters: {', '.join(sorted(unknown))}")
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
