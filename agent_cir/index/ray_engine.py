"""The Ray Data encoding engine (``engine="ray"``, ``agent-cir index --engine ray``): the same job as the local
engine, spread over a Ray cluster.

The pipeline, one Ray Data dataset over the entries the planner says must be encoded (unchanged files never
reach Ray, so reruns are incremental; the build checkpoints every batch that comes back):

  ``from_items``            one row per file: its position in the job and its absolute path
  ``map_batches`` (tasks)   decode + preprocess on CPU, with ``loader.decode_file`` (``decode.load_image`` and the
                            encoder's own ``preprocess``, a model-free transform shipped to the tasks), so bad
                            files get exactly the local engine's reasons
  ``map_batches`` (actors)  an actor pool (``concurrency`` actors with ``num_cpus``/``num_gpus`` each) that builds
                            the encoder once per actor from ``encoder.info`` and embeds the decoded pixels
  ``iter_batches``          back in the driver: one ``EncodedBatch`` per batch, in whatever order they finish

Files are read by path on the workers: on a multi-node cluster the gallery must be on storage every node
mounts at the same path (NFS, a fuse-mounted bucket). ``job.options`` (all optional):

  address              join this cluster (``ray.init(address=...)``, e.g. ``auto`` or ``ray://host:10001``);
                       default: start a local cluster for this build and shut it down afterwards. When this
                       process is already connected to Ray (``ray.is_initialized()``), that connection is used
                       and left open.
  concurrency          encoder actors (default 1)
  num_cpus_per_actor   CPUs each actor reserves (default 1; also its torch thread count)
  num_gpus_per_actor   GPUs each actor reserves (default 0; > 0 runs the encoder on cuda)
  decode_num_cpus      CPUs each decode task reserves (default 1; fractions oversubscribe)
  num_cpus             size of the local cluster (default: every core)
  device               torch device of the actors' encoders (default: cuda with GPUs, else the job encoder's)
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from agent_cir.errors import AgentCirError
from agent_cir.index.jobs import EncodedBatch, EncodeJob
from agent_cir.index.loader import MAX_DECODER_CRASHES, decode_file
from agent_cir.index.manifest import ManifestEntry
from agent_cir.index.reasons import REASON_DECODER_CRASH

log = logging.getLogger("agent_cir.index")

DECODE_TASK_RETRIES = 1
"""Retries of a decode task whose worker died (a node lost mid-task is worth one); then its files are probed."""
RAY_MISSING = "install the ray extra: pip install 'agent-cir[ray]'"


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or an AgentCirError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray core without the [data] extra is not enough
    except ImportError as err:
        raise AgentCirError(RAY_MISSING) from err
    return ray


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    concurrency: int = 1
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0
    decode_num_cpus: float = 1.0
    num_cpus: int | None = None
    device: str | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RayOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise AgentCirError(f"unknown ray engine options {unknown}; known: {', '.join(sorted(known))}")
        opts = cls(**{key: value for key, value in options.items() if value is not None})
        if opts.concurrency < 1:
            raise AgentCirError(f"ray engine: concurrency must be at least 1, got {opts.concurrency}")
        for name in ("num_cpus_per_actor", "num_gpus_per_actor", "decode_num_cpus"):
            if getattr(opts, name) < 0:
                raise AgentCirError(f"ray engine: {name} must be >= 0, got {getattr(opts, name)}")
        if opts.num_cpus is not None and opts.num_cpus < 1:
            raise AgentCirError(f"ray engine: num_cpus must be at least 1, got {opts.num_cpus}")
        return opts

    def actor_device(self, encoder_info: dict[str, Any]) -> str:
        if self.device:
            return self.device
        return "cuda" if self.num_gpus_per_actor > 0 else str(encoder_info.get("device", "cpu"))


def decode_rows(
    batch: dict[str, np.ndarray], preprocess: Any, pixel_shape: tuple[int, ...], root: str | None = None
) -> dict[str, np.ndarray]:
    """Decode task: paths -> preprocessed pixels (zeros for a bad file) + the reason it was bad ("" if good)."""
    count = len(batch["path"])
    pixels = np.zeros((count, *pixel_shape), dtype=np.float32)
    reasons, details = [], []
    for row, path in enumerate(batch["path"]):
        tensor, reason, detail = decode_file(str(path), preprocess, root)
        if tensor is not None:
            pixels[row] = np.asarray(tensor, dtype=np.float32)
        reasons.append(reason or "")
        details.append(detail or "")
    return {"position": batch["position"], "pixels": pixels, "reason": np.array(reasons), "detail": np.array(details)}


class EmbedActor:
    """One encoder per actor, rebuilt from the job encoder's ``info``; embeds the rows that decoded."""

    def __init__(self, encoder_info: dict[str, Any], device: str, batch_size: int) -> None:
        from agent_cir.encoders import create_encoder
        from agent_cir.encoders.base import describe_encoder, encoder_identity
        from agent_cir.index.encoder_meta import encoder_config_from_meta

        config = encoder_config_from_meta({"encoder": encoder_info}, device=device).model_copy(update={"batch_size": batch_size})
        self.encoder = create_encoder(config)
        self.batch_size = batch_size
        if encoder_identity(self.encoder.info) != encoder_identity(encoder_info):
            # e.g. a node with another open_clip version or another file at the checkpoint path
            differing = sorted(k for k in encoder_identity(encoder_info) if self.encoder.info.get(k) != encoder_info.get(k))
            raise AgentCirError(
                f"a Ray worker built encoder {describe_encoder(self.encoder.info)} that differs from the driver's in "
                f"{', '.join(differing)}; install the same agent-cir, open_clip and weights on every node"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        good = batch["reason"] == ""
        vectors = np.zeros((len(good), int(self.encoder.dim)), dtype=np.float32)
        if good.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][good]))
            vectors[good] = self.encoder.encode_images(pixels, batch_size=self.batch_size)
        return {"position": batch["position"], "vector": vectors, "reason": batch["reason"], "detail": batch["detail"]}


def _pixel_shape(preprocess: Any) -> tuple[int, ...]:
    """Shape of one preprocessed image (the transforms resize and crop to a fixed size)."""
    from PIL import Image

    return tuple(np.asarray(preprocess(Image.new("RGB", (64, 48)))).shape)


_WORKER_BASE_MEMORY = 384 << 20
"""A Ray worker process with torch, PIL and agent_cir imported (measured ~330 MiB on Linux x86_64)."""


def _decode_task_memory(batch_size: int, pixel_shape: tuple[int, ...]) -> int:
    """Bytes a decode task holds at most: the worker, its batch of float32 pixels and one full-size RGB decode."""
    from agent_cir.index.decode import MAX_DECODE_PIXELS

    return int(_WORKER_BASE_MEMORY + batch_size * np.prod(pixel_shape) * 4 + MAX_DECODE_PIXELS * 3)


def _check_resources(ray: Any, opts: RayOptions, started_here: bool) -> None:
    """A pool that takes every CPU leaves none for decoding, and Ray then waits forever: say so instead."""
    available = ray.cluster_resources()
    cpus, gpus = float(available.get("CPU", 0)), float(available.get("GPU", 0))
    actor_cpus = opts.concurrency * opts.num_cpus_per_actor
    actor_gpus = opts.concurrency * opts.num_gpus_per_actor
    problems = []
    if actor_cpus + opts.decode_num_cpus > cpus:
        problems.append(
            f"{opts.concurrency} actors x {opts.num_cpus_per_actor:g} CPUs + {opts.decode_num_cpus:g} CPU for a decode task "
            f"= {actor_cpus + opts.decode_num_cpus:g} CPUs, but the cluster has {cpus:g}"
        )
    if actor_gpus > gpus:
        problems.append(f"{opts.concurrency} actors x {opts.num_gpus_per_actor:g} GPUs = {actor_gpus:g}, but the cluster has {gpus:g}")
    if not problems:
        return
    message = (
        f"ray engine: {'; '.join(problems)}. Lower --concurrency / --num-cpus-per-actor / --num-gpus-per-actor"
        + (" (or give the local cluster more CPUs: engine option num_cpus)" if started_here else "")
    )
    if started_here:
        raise AgentCirError(message)
    log.warning("%s; waiting for the cluster to grow (an autoscaler may add nodes)", message)


@contextlib.contextmanager
def ray_session(opts: RayOptions) -> Iterator[tuple[Any, bool]]:
    """Connected Ray (module, whether this call started the connection); disconnects what it started."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray, False
        return
    settings: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    try:
        if opts.address:
            ray.init(address=opts.address, **settings)
        else:
            # address="local" starts a fresh cluster even when RAY_ADDRESS points at another one; it serves this
            # build only, so it listens on loopback.
            ray.init(address="local", num_cpus=opts.num_cpus, _node_ip_address="127.0.0.1", **settings)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"Ray cluster at {opts.address!r}" if opts.address else "a local Ray cluster"
        hint = "start one with `ray start --head` (then --address auto) or leave out --address" if opts.address else ""
        raise AgentCirError(f"cannot connect to {where}: {' '.join(str(err).split())[:300]}. {hint}".strip()) from err
    try:
        yield ray, not opts.address
    finally:
        ray.shutdown()


_REMOTE_USER_ERROR = re.compile(r"^\s*agent_cir\.[\w.]*Error: (.+)$", re.MULTILINE)


def user_error_message(err: BaseException) -> str | None:
    """The message of an AgentCirError raised on a Ray worker, found in what Ray hands back, or None.

    A task's error arrives as a RayTaskError whose ``cause`` chain holds the exception; an actor that failed in
    ``__init__`` (e.g. weights missing on that node) arrives as ActorDiedError, which keeps only the remote
    traceback's text, so the last ``agent_cir...Error: message`` line of it is used."""
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, AgentCirError):
            return str(seen)
        seen = getattr(seen, "cause", None) or seen.__cause__
    found = _REMOTE_USER_ERROR.findall(str(err))
    return found[-1].strip() if found else None


def _skipped(entry: ManifestEntry, reason: str, detail: str) -> ManifestEntry:
    return replace(entry, status="skipped", row=None, reason=reason, detail=detail)


def encode_dataset(ray: Any, job: EncodeJob, opts: RayOptions, entries: list[ManifestEntry]) -> Any:
    """The lazy Ray Data pipeline for ``entries``: rows of position, vector, reason, detail (needs a connection)."""
    preprocess = job.encoder.preprocess
    pixel_shape = _pixel_shape(preprocess)
    rows = [{"position": position, "path": str(job.root / entry.path)} for position, entry in enumerate(entries)]
    return (
        ray.data.from_items(rows)
        .map_batches(
            decode_rows,
            batch_size=job.batch_size,
            batch_format="numpy",
            fn_kwargs={"preprocess": preprocess, "pixel_shape": pixel_shape, "root": job.confine_root},
            num_cpus=opts.decode_num_cpus,
            # Ray Data retries a task whose worker died without end (max_retries=-1): a file that kills its decode
            # worker (a decoder segfault, the OOM killer) would be decoded again and again forever.
            max_retries=DECODE_TASK_RETRIES,
            # Reserving the task's memory also keeps Ray Data from fusing decoding into the actors (it fuses
            # ops with identical remote args only): decode tasks run on any CPU of the cluster, overlapped
            # with embedding, instead of inside the actors one batch after another.
            memory=_decode_task_memory(job.batch_size, pixel_shape),
        )
        .map_batches(
            EmbedActor,
            batch_size=job.batch_size,
            batch_format="numpy",
            fn_constructor_kwargs={
                "encoder_info": dict(job.encoder.info),
                "device": opts.actor_device(job.encoder.info),
                "batch_size": job.batch_size,
            },
            compute=ray.data.ActorPoolStrategy(size=opts.concurrency),
            num_cpus=opts.num_cpus_per_actor,
            num_gpus=opts.num_gpus_per_actor,
        )
    )


def ray_engine(job: EncodeJob) -> Iterator[EncodedBatch]:
    """Decode in Ray tasks, embed in a Ray actor pool, yield batches as they finish (see the module docstring).

    A decode task whose worker dies (``WorkerCrashedError``, ``OutOfMemoryError``) stops the dataset; the files not
    yet answered are then decoded once each in a task of their own, those whose task dies too are bad files
    (``REASON_DECODER_CRASH``), and the dataset runs again over the rest, up to ``MAX_DECODER_CRASHES`` files."""
    opts = RayOptions.from_options(job.options)
    entries = list(job.entries)
    require_ray()
    if not entries:
        return
    from tqdm.auto import tqdm

    with ray_session(opts) as (ray, started_here):
        _check_resources(ray, opts, started_here)
        context = ray.data.DataContext.get_current()
        saved = context.enable_progress_bars, context.print_on_execution_start
        context.enable_progress_bars = context.print_on_execution_start = False  # one bar, ours, for every engine
        bar = tqdm(total=len(entries), unit="img", desc="encoding (ray)", disable=not job.progress, dynamic_ncols=True)
        remaining, killers = entries, 0
        try:
            while remaining:
                answered: set[str] = set()
                try:
                    dataset = encode_dataset(ray, job, opts, remaining)
                    for batch in dataset.iter_batches(batch_size=job.batch_size, batch_format="numpy"):
                        answered.update(remaining[int(position)].path for position in batch["position"])
                        yield _encoded_batch(batch, remaining)
                        bar.update(len(batch["position"]))
                    return
                except Exception as err:
                    if not _worker_died(ray, err):
                        raise
                    left = [entry for entry in remaining if entry.path not in answered]
                    dead = _files_that_kill_their_task(ray, job, opts, left)
                    killers += len(dead)
                    if not dead or killers > MAX_DECODER_CRASHES:
                        blame = f"on {killers} files" if dead else "with no single file to blame"
                        raise AgentCirError(
                            f"Ray decode workers died {blame} ({' '.join(str(err).split())[:200]}); the workers' memory "
                            "or the decoder is failing. Check the cluster's memory, or index with the local engine and "
                            "--workers 0 to see the error"
                        ) from err
                    yield EncodedBatch([], np.zeros((0, int(job.encoder.dim)), dtype=np.float32), dead)
                    bar.update(len(dead))
                    blamed = {entry.path for entry in dead}
                    remaining = [entry for entry in left if entry.path not in blamed]
        except Exception as err:
            message = user_error_message(err)
            if message is not None:  # say what the user can fix, without Ray's remote traceback
                raise AgentCirError(message) from err
            raise
        finally:
            bar.close()
            context.enable_progress_bars, context.print_on_execution_start = saved


def _worker_died(ray: Any, err: BaseException) -> bool:
    """Whether ``err`` (anywhere in its cause chain) is a Ray worker killed under a task, not a Python error."""
    dead = (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError)
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, dead):
            return True
        seen = getattr(seen, "cause", None) or seen.__cause__
    return False


def probe_file(path: str, preprocess: Any, root: str | None) -> tuple[str, str]:
    """Decode one file as the decode task does; only the verdict comes back ("" when the file is good)."""
    tensor, reason, detail = decode_file(path, preprocess, root)
    return ("", "") if tensor is not None else (reason or "", detail or "")


def _files_that_kill_their_task(ray: Any, job: EncodeJob, opts: RayOptions, entries: list[ManifestEntry]) -> list[ManifestEntry]:
    """Each file in a task of its own, never retried: the ones whose task dies, as skipped entries."""
    probe = ray.remote(max_retries=0, num_cpus=opts.decode_num_cpus)(probe_file)
    refs = [probe.remote(str(job.root / entry.path), job.encoder.preprocess, job.confine_root) for entry in entries]
    dead = []
    for entry, ref in zip(entries, refs):
        try:
            ray.get(ref)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError) as err:
            detail = f"its Ray decode worker died while decoding it ({type(err).__name__})"
            dead.append(_skipped(entry, REASON_DECODER_CRASH, detail))
    return dead


def _encoded_batch(batch: dict[str, np.ndarray], entries: list[ManifestEntry]) -> EncodedBatch:
    positions = [int(position) for position in batch["position"]]
    reasons, details = batch["reason"], batch["detail"]
    good = reasons == ""
    failures = [
        _skipped(entries[position], str(reasons[row]), str(details[row]))
        for row, position in enumerate(positions)
        if not good[row]
    ]
    vectors = np.asarray(batch["vector"], dtype=np.float32)[good]
    return EncodedBatch([entries[position] for row, position in enumerate(positions) if good[row]], vectors, failures)
