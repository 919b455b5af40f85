"""Data parallelism over every device of every host: one mesh axis, one jitted step at any scale.

Detectron2 runs one process per GPU under `DistributedDataParallel`. Here one process per
*host* drives all of that host's devices, and the train step is one `jax.jit` over a 1-D
mesh `("data",)` of all devices of all hosts:

* parameters, optimizer state and BN statistics are **replicated** (`P()`);
* the batch is **sharded** along its leading axis (`P("data")`): each host loads its slice
  (`solver.ims_per_batch // process_count` images) of the global batch, which `TrainLoader`
  plans identically on every host, bucket included; `shard_batch` assembles the hosts' pieces
  into one global array, rows in process order;
* the program sees the *global* batch, so the losses, their normalisers (RPN:
  `batch_size_per_image x num_images`, ROI: number of sampled ROIs), gradients and metrics
  are those of the global batch, and BN ("BN") statistics are global-batch statistics
  (Detectron2's "SyncBN"); XLA inserts the all-reduces. 8 devices compute what 1 device
  computes on the same global batch, up to float summation order.

Parity: Detectron2 (`engine/launch.py`, DDP) averages per-GPU gradients; each GPU normalises
its ROI losses by its own sampled-ROI count, which equals the global mean only when every
GPU samples the same number of ROIs (always the case for the RPN). We normalise over the
global batch, so results do not depend on the number of devices.

Learning rate. `solver.base_lr` is the rate of the *global* batch `solver.ims_per_batch`, as in
Detectron2 (`SOLVER.IMS_PER_BATCH` is global too). Nothing is rescaled automatically
(Detectron2's `SOLVER.REFERENCE_WORLD_SIZE = 0`, off by default). To change the global batch,
apply the linear scaling rule of the reference schedule (16 images, LR 0.02, 90k iterations)
yourself: `base_lr = 0.02 * ims_per_batch / 16`, and `max_iter`, `steps`, `warmup_iters`,
`checkpoint_period` times `16 / ims_per_batch` (`docs/scaling.md`).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

logger = logging.getLogger(__name__)

DATA_AXIS = "data"
# `maybe_initialize_distributed(mode)`: "auto" initialises when the environment says so.
MODES = ("auto", "on", "off")
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID")


def _want_distributed(mode: str) -> tuple[bool, str]:
    if mode not in MODES:
        raise ValueError(f"distributed mode must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return False, "off"
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True, "JAX_COORDINATOR_ADDRESS"
    if all(v in os.environ for v in _SLURM_VARS) and int(os.environ["SLURM_NTASKS"]) > 1:
        return True, "SLURM"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts:
        return True, "TPU pod (TPU_WORKER_HOSTNAMES)"
    return mode == "on", "mode 'on'"


def maybe_initialize_distributed(mode: str | None = None) -> bool:
    """Calls `jax.distributed.initialize` when running as one of several processes.

    Must run before anything touches a device. Decides from `mode` (default: the environment
    variable `JAX_RCNN_DISTRIBUTED`, else "auto"):

    * "off": never (single process, all local devices).
    * "auto": when `JAX_COORDINATOR_ADDRESS` is set (then `JAX_NUM_PROCESSES` and
      `JAX_PROCESS_ID` give the rest; `JAX_LOCAL_DEVICE_IDS` optionally restricts the local
      devices), under a SLURM job with more than one task (`srun`), or on a multi-host TPU
      pod slice. In the last two cases JAX's cluster auto-detection fills in everything.
    * "on": always (JAX auto-detects SLURM, Open MPI, Kubernetes, Cloud TPU; otherwise the
      three `JAX_*` variables above are required).

    Returns:
      True when this call initialised the distributed runtime.

    Raises:
      ValueError: `JAX_COORDINATOR_ADDRESS` is set without the process count and id.
    """
    mode = mode or os.environ.get("JAX_RCNN_DISTRIBUTED", "auto")
    want, why = _want_distributed(mode)
    if not want or jax.distributed.is_initialized():
        return False
    kwargs = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if v not in os.environ]
        if missing:
            raise ValueError(
                f"JAX_COORDINATOR_ADDRESS is set but {missing} are not; set all three "
                "(see docs/scaling.md)"
            )
        kwargs = dict(
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    logger.info("jax.distributed.initialize (%s) %s", why, kwargs)
    jax.distributed.initialize(**kwargs)
    logger.info(
        "process %d of %d: %d local devices, %d in all",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh `("data",)` over `devices` (default: every device of every host).

    Devices are ordered by (process, id), so the global batch holds process 0's images first,
    then process 1's, ... (the row order fixes each image's sampling key).
    """
    devices = jax.devices() if devices is None else list(devices)
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters, optimizer state, BN statistics, keys and metrics."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batches: the leading (image) axis split over the `data` axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def per_device_batch(global_batch: int, mesh: Mesh, what: str = "the global batch") -> int:
    """Images per device; raises unless `global_batch` divides over the mesh.

    Args:
      global_batch: images per step over all hosts (e.g. `config.solver.ims_per_batch`).
      mesh: the data mesh.
      what: the config key named in the error.

    Raises:
      ValueError: `global_batch` is not a positive multiple of the device count.
    """
    n = mesh.devices.size
    if global_batch <= 0 or global_batch % n:
        raise ValueError(
            f"{what} = {global_batch} must be a positive multiple of the number of devices "
            f"({n} = {jax.process_count()} process(es) x {n // jax.process_count()} local "
            f"device(s)); set it to e.g. {max(1, -(-global_batch // n)) * n} and rescale "
            "solver.base_lr (docs/scaling.md)"
        )
    return global_batch // n


def shard_batch(mesh: Mesh, host_batch: dict[str, Any]) -> dict[str, jax.Array]:
    """Assembles every host's batch into global arrays sharded along the image axis.

    Args:
      mesh: the data mesh.
      host_batch: this host's arrays, leading axis `B_host = B / process_count` (the same on
        every host, and every other dimension equal across hosts).

    Returns:
      The same keys as global `jax.Array`s of leading axis `B`, sharded `P("data")`.
    """
    sharding = batch_sharding(mesh)
    local = mesh.local_mesh.devices.size

    def put(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local:
            raise ValueError(
                f"a host batch of {x.shape[:1]} images does not divide over this host's "
                f"{local} devices"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, host_batch)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Global arrays replicated on every device of `mesh` (every host passes the same values).

    Arrays already replicated on `mesh` are returned as they are; others are copied through
    host memory, which works for single-device, NumPy and PRNG-key leaves alike.
    """
    sharding = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def to_host_local(mesh: Mesh, tree: Any) -> Any:
    """NumPy copies of this host's rows of batch-sharded outputs (inverse of `shard_batch`)."""

    def get(x):
        if jax.process_count() > 1 and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            x = multihost_utils.global_array_to_host_local_array(x, mesh, P(DATA_AXIS))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def allgather_json(obj: Any) -> list[Any]:
    """`[obj of process 0, obj of process 1, ...]` for a JSON-serialisable `obj` (a collective:
    every process must call it)."""
    if jax.process_count() == 1:
        return [json.loads(json.dumps(obj))]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(gathered[i, : int(n)].tobytes()) for i, n in enumerate(sizes)]


def host_max(x: np.ndarray) -> np.ndarray:
    """Elementwise maximum of `x` over processes (a collective when there are several)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.max(np.asarray(multihost_utils.process_allgather(np.asarray(x))), axis=0)


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any one (a collective)."""
    return bool(host_max(np.int32(bool(flag))))


def sync_step(flag: bool, host_batch_shape: tuple[int, ...]) -> bool:
    """One small collective per step of a multi-process run, before the batch is assembled.

    Checks that every host brings a batch of the same shape (a global array needs it; hosts
    with different shapes would compile different programs and hang) and returns True on every
    process when `flag` (e.g. SIGTERM received) is set on any. `TrainLoader` plans each global
    batch identically on every host, so the shapes differ only when the hosts' loaders do
    (config, records, seed or restored state).

    Raises:
      ValueError: the hosts' batch shapes differ.
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    row = np.asarray([int(bool(flag)), *host_batch_shape], np.int32)
    table = np.asarray(multihost_utils.process_allgather(row))
    if (table[:, 1:] != table[0, 1:]).any():
        raise ValueError(
            f"the hosts' batches differ in shape (process: shape) "
            f"{ {i: tuple(r[1:]) for i, r in enumerate(table)} }: every host must load the same "
            "padded shape at each step; TrainLoader plans the global batches identically on "
            "every host when all hosts have the same config, seed and training records (same "
            "order) and restore the same loader state"
        )
    return bool(table[:, 0].any())


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Waits until every process reaches `barrier(name)` (coordination service; no devices).

    Unlike a device collective its timeout is ours: CPU (gloo) collectives give up after 30 s,
    which a host that compiles more slowly than the others can exceed.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed

    jax_distributed.global_state.client.wait_at_barrier(name, timeout_s * 1000)


def precompile_all(
    work: list[tuple[SyncCompiled, list[tuple]]], *, threads: int | None = None
) -> int:
    """`SyncCompiled.precompile` of several functions in one pool of compile threads.

    Args:
      work: `(function, signatures)` pairs (see `SyncCompiled.precompile`).
      threads: parallel compiles (default: one per program, at most the CPU count).

    Returns:
      The number of programs compiled.
    """

    todo = []  # (function, key, lowered)
    for fn, signatures in work:
        keys = set()
        for args in signatures:
            _, key = fn._key(args)
            if key not in fn._compiled and key not in keys:
                keys.add(key)
                todo.append((fn, key, fn.jitted.lower(*args)))  # tracing holds the GIL
    if todo:
        n = threads or min(len(todo), os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(n, 1)) as pool:
            done = list(pool.map(lambda item: item[2].compile(), todo))
        for (fn, key, _), compiled in zip(todo, done, strict=True):
            fn._compiled[key] = compiled
    for fn, _ in work:
        barrier(f"jax_rcnn/{fn.name}/precompiled/{len(fn._compiled)}")
    return len(todo)


class SyncCompiled:
    """A jitted function whose every new input signature is compiled ahead, then all processes
    meet at a barrier before it first runs (single process: the jitted function itself).

    Compile time differs between hosts; without the barrier the first collective of a fresh
    program can time out on the host that finished compiling first. `precompile` compiles a
    list of signatures up front (AOT, in parallel threads), so a training run's programs are all
    built before its first step and its ETA is steady.
    """

    def __init__(self, jitted, name: str, static_argnums: tuple[int, ...] = ()):
        self.jitted, self.name, self.static_argnums = jitted, name, tuple(static_argnums)
        self._compiled: dict = {}
        self._seen: set = set()  # signatures run through `jitted` (single process)

    def _key(self, args) -> tuple[list, Any]:
        dynamic = [a for i, a in enumerate(args) if i not in self.static_argnums]
        static = tuple(args[i] for i in self.static_argnums)
        leaves, treedef = jax.tree.flatten(dynamic)
        return dynamic, (treedef, static, tuple((np.shape(x), str(x.dtype)) for x in leaves))

    @property
    def num_programs(self) -> int:
        """Distinct input signatures compiled or run so far (one program each)."""
        return len(self._compiled) + len(self._seen - set(self._compiled))

    def precompile(self, signatures: list[tuple], *, threads: int | None = None) -> int:
        """Lowers (in turn) and compiles (in `threads` threads) each signature not compiled yet.

        Args:
          signatures: argument tuples of `jax.ShapeDtypeStruct`s (with shardings) or arrays.
          threads: parallel compiles (default: one per signature, at most the CPU count).

        Returns:
          The number of programs compiled.
        """
        return precompile_all([(self, signatures)], threads=threads)

    def compile_in_background(self, signatures: list[tuple], executor) -> None:
        """Single process: lowers and compiles each new signature as a task of `executor` (a
        `concurrent.futures.Executor`); a call with that signature waits for its program. Lets
        a run start on its first program while the others compile.

        Raises:
          RuntimeError: with several processes (they must compile ahead and meet at a barrier:
            use `precompile`).
        """
        if jax.process_count() > 1:
            raise RuntimeError("compile_in_background is for a single process; use precompile")
        for args in signatures:
            _, key = self._key(args)
            if key not in self._compiled:
                self._compiled[key] = executor.submit(
                    lambda a=args: self.jitted.lower(*a).compile()
                )

    def __call__(self, *args):
        dynamic, key = self._key(args)
        if key in self._compiled:
            compiled = self._compiled[key]
            if isinstance(compiled, Future):
                compiled = self._compiled[key] = compiled.result()
            return compiled(*dynamic)
        if jax.process_count() == 1:
            if self._compiled and key not in self._seen:
                logger.warning("%s: compiling a signature that was not precompiled", self.name)
            self._seen.add(key)
            return self.jitted(*args)
        self._compiled[key] = self.jitted.lower(*args).compile()
        barrier(f"jax_rcnn/{self.name}/{len(self._compiled)}")
        return self._compiled[key](*dynamic)
