"""Run a saved network (a NIR graph, ours or another tool's, or our HDF5 archive) on an input
array and write what every layer did.

Input: ``[T, B, N]`` (or ``[T, B, C, H, W]``) in a ``.npy`` file (memory-mapped, so inputs
larger than memory stream through) or an ``.h5`` file (dataset ``input``, or its only
dataset). Numbers (bool, int or float), finite, sample shape matching the model's input.

Output (NIR's time-gridded data layout, readable with ``nir.read_data``)::

    /                                attrs __type__ = "NIRGraphData", model, dt, integration, ...
    /nodes/<layer>/                  attrs __type__ = "NIRNodeData"
    /nodes/<layer>/observables/spikes/data   bool    [B, T, n_neurons]   (attrs __type__ =
    /nodes/<layer>/observables/v/data        float32 [B, T, n_neurons]    "TimeGriddedData", dt)
    /nodes/output/observables/{spikes|v}/data   the network's output (spikes, or the
                                                readout membrane of an LI/CubaLI readout)

(samples first, as NIR stores data; ``n_neurons`` flattens conv maps ``C*H*W``). ``v`` is the
membrane before the reset of each step, written when ``record`` contains ``"v"``. Batches of
``batch`` samples go through the network one after the other (a progress bar on the
terminal); the file is written to a temporary name and renamed at the end, so an error or an
interrupt leaves no output behind. Spikes are stored with HDF5's gzip filter (lzf was measured
26 % faster to write but 53 % larger, and only h5py reads it), deflated at level 1 with the
run-length strategy (:func:`deflate`; by zlib-ng when installed) on every core and stored as
finished chunks; each batch is written by a background thread while the next one is
computed.

Two ways through the network:

* **fused** (:mod:`neuroplastic.simulate_fused`, kernel :mod:`neuroplastic.kernels.chain_sim`):
  a plain chain of ``Linear`` layers (dense or masked) each followed by a LIF, IF or CubaLIF
  population (an LI/CubaLI readout last), scalar parameters, runs whole in one numba kernel:
  samples in parallel, per sample each layer over all ``T`` steps, per step only the active
  inputs' real synapses (input-major CSR), spikes written as bytes straight into the
  ``[B, T, n]`` outputs. Same spikes and membranes as the layer-by-layer path with
  ``backend="event"``, bit for bit; under the default routes, equal except where a membrane
  lies within float rounding of the threshold;
* **layer by layer** (everything else, or ``fused=False`` / ``NEUROPLASTIC_FUSED=0``): the
  network's own forward in chunks of samples; sparse layers on the event-driven CSR kernels
  through the usual dispatch (:mod:`neuroplastic.kernels.dispatch`).
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import UserError
from .network import SNN
from .neurons import Neuron

try:  # optional (``pip install neuroplastic[fast]``): zlib-ng deflates spike bytes ~3x faster
    from zlib_ng import zlib_ng as _zlib
except ImportError:  # pragma: no cover - depends on the environment
    import zlib as _zlib

__all__ = ["load_model", "load_input", "simulate", "run_batches", "RECORDABLE"]

RECORDABLE = ("spikes", "v")


def load_model(path: str | Path, dt: float | None = None, integration: str | None = None) -> SNN:
    """A network from a ``.nir`` graph or our ``.h5`` archive (told apart by content).

    ``dt``/``integration`` say how to step the neurons' ODEs (default: the file's own)."""
    from .export.archive import FORMAT, load_archive
    from .export.nir_graph import from_nir
    from .export.nir_params import Timing

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            kind = "archive" if f.attrs.get("format") in (FORMAT, FORMAT.encode()) else "nir" if "node" in f else None
    except OSError as exc:
        raise UserError(f"{path}: {_not_hdf5(exc)} (a .nir graph or a neuroplastic archive)") from None
    if kind is None:
        raise UserError(f"{path}: neither a NIR graph nor a neuroplastic archive")
    if kind == "nir":
        return from_nir(path, dt=dt, integration=integration)
    model = load_archive(path).model
    if dt is not None or integration is not None:
        for m in model.modules():
            if isinstance(m, Neuron):
                t = Timing(float(dt) if dt is not None else m.dt, integration or m.integration)
                m.dt, m.integration = t.dt, t.integration
    return model


def _not_hdf5(exc: OSError) -> str:
    return "truncated HDF5 file (cut short)" if "truncated" in str(exc) else "not an HDF5 file"


def load_input(path: str | Path):
    """The input array ``[T, B, ...]`` of a ``.npy`` (memory-mapped) or ``.h5`` file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    if path.suffix == ".npy":
        with open(path, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":  # else numpy reads it as a pickle and suggests allow_pickle
                raise UserError(f"{path}: not a .npy file (no NPY header)")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            why = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "mmap length is greater than file size" in why:
                why = "truncated: shorter than its header says"
            elif "Python objects" in why or "allow_pickle" in why:
                why = "it holds Python objects, not numbers"
            raise UserError(f"{path}: not a readable .npy array ({why})") from None
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path}: {_not_hdf5(exc)} (inputs are .npy or HDF5)") from None
    names = [k for k, v in f.items() if isinstance(v, h5py.Dataset)]
    name = "input" if "input" in names else names[0] if len(names) == 1 else None
    if name is None:
        f.close()
        raise UserError(f"{path}: no dataset 'input' (datasets: {', '.join(names) or 'none'})")
    return f[name]


def _check_input(x, model: SNN, where: str) -> tuple[int, int]:
    shape = tuple(int(s) for s in x.shape)
    if len(shape) < 3:
        raise UserError(f"{where}: input must be [T, B, N] or [T, B, C, H, W], got shape {shape}")
    if np.dtype(x.dtype).kind not in "biuf":
        raise UserError(f"{where}: input dtype {x.dtype} is not numeric")
    want = model.in_shape
    if want is not None and tuple(shape[2:]) != tuple(want):
        raise UserError(f"{where}: samples of shape {shape[2:]} do not fit the model's input {tuple(want)}")
    if shape[0] < 1 or shape[1] < 1:
        raise UserError(f"{where}: input has no time steps or no samples (shape {shape})")
    return shape[0], shape[1]


#: the largest activation (``[T, b, widest layer]`` float32) one chunk of a batch may allocate.
#: Below glibc's largest mmap threshold (32 MB), freed buffers are reused instead of being
#: returned to the kernel and faulted in again on the next chunk (measured: ~2/3 of a
#: 256-sample pass of the 784-800-800-10 benchmark went to page faults with 82 MB buffers).
CHUNK_BYTES = 16 * 2**20


def _widths(model: SNN, sample_shape: tuple[int, ...]) -> dict[str, int]:
    """How many values one sample produces at one step in each layer (by name)."""
    widths: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: widths.__setitem__(name, int(out[0, 0].numel())))
             for name, m in model.layers.items()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, *sample_shape))
    finally:
        for h in hooks:
            h.remove()
    return widths


def _widest(model: SNN, sample_shape: tuple[int, ...]) -> int:
    """The largest number of values one sample produces at one step in any layer."""
    return max([int(np.prod(sample_shape)), *_widths(model, sample_shape).values()])


def _chunk_rows(B: int, T: int, n: int) -> int:
    """Samples per HDF5 chunk of an observable ``[B, T, n]``: about 1 MB of bool spikes."""
    return min(B, max(1, 2**20 // max(1, T * n)))


def _piece(model: SNN, sample_shape: tuple[int, ...], T: int, B: int, batch: int, record: tuple[str, ...]) -> int:
    """Samples per pass in :func:`simulate`: at most ``batch``, and few enough that one pass's
    records (every neuron layer's spikes and, when recorded, membranes) stay under
    :data:`CHUNK_BYTES`: buffers that size are reused by the allocator instead of being
    faulted in afresh, and the background writer deflates one pass while the next runs (so
    even a single batch overlaps computing and writing). A multiple of the widest layer's
    HDF5 chunk rows when that fits, so its chunks are written whole."""
    if batch < 1:
        return batch  # run_batches says what is wrong
    widths = [n for name, n in _widths(model, sample_shape).items() if isinstance(model.layers[name], Neuron)]
    per_sample = T * sum(widths) * (1 + (4 if "v" in record else 0))
    piece = max(1, min(batch, B, CHUNK_BYTES // max(1, per_sample)))
    rows = _chunk_rows(B, T, max(widths, default=1))
    return piece // rows * rows if piece >= rows else piece


def run_batches(model: SNN, x, batch: int, record: Iterable[str] = ("spikes",),
                quiet: bool = False, where: str = "input", *,
                fused: bool | None = None) -> Iterator[tuple[int, dict[str, dict[str, np.ndarray]]]]:
    """Yield ``(first sample, {layer: {observable: [b, T, n]}})`` per batch of ``x [T, B, ...]``.

    A network that is a plain chain of ``Linear`` + LIF/IF/CubaLIF layers (LI/CubaLI readout)
    runs in the fused one-kernel simulator (:mod:`neuroplastic.simulate_fused`); any other
    runs layer by layer, each batch in chunks of samples whose largest activation stays
    under :data:`CHUNK_BYTES` (same results: samples are independent). ``fused``: ``None``
    (default) fuses when the network qualifies and the environment variable
    ``NEUROPLASTIC_FUSED`` is not ``0``; ``False`` always runs layer by layer; ``True``
    fuses or raises :class:`~neuroplastic.errors.UserError` saying why it cannot."""
    from . import simulate_fused

    record = tuple(record)
    bad = set(record) - set(RECORDABLE)
    if bad or not record:
        raise UserError(f"--record takes {', '.join(RECORDABLE)} (comma separated), got {','.join(record)!r}")
    if batch < 1:
        raise UserError(f"batch must be >= 1, got {batch}")
    T, B = _check_input(x, model, where)
    model.eval()
    chain = None
    if fused or (fused is None and simulate_fused.enabled()):
        why = simulate_fused.why_not(model)
        if why is None and len(x.shape) != 3:
            why = f"input of shape {tuple(x.shape)} is not [T, B, N]"
        if why is not None and fused:
            raise UserError(f"the fused simulator cannot run this network: {why}")
        chain = simulate_fused.prepare(model, "v" in record) if why is None else None
    if chain is not None:
        yield from _run_fused(chain, model, x, T, B, batch, record, quiet, where)
        return
    chunk = max(1, CHUNK_BYTES // (4 * T * _widest(model, tuple(x.shape[2:]))))
    names = list(model.layers)
    key = "spikes" if getattr(model.layers[names[-1]], "spiking", True) else "v"
    floats = np.dtype(x.dtype).kind == "f"
    bar = tqdm(total=B, desc="simulate", unit="sample", disable=True if quiet else None, leave=False)
    try:
        with torch.no_grad(), model.recording(membranes="v" in record):
            for start in range(0, B, batch):
                stop = min(start + batch, B)
                rows: dict[str, dict[str, np.ndarray]] = {}
                for c in range(start, stop, chunk):
                    # a float32 copy per chunk (small buffers are reused; a slice of a read-only
                    # memmap would also make torch warn on stderr)
                    xc = np.array(x[:, c:min(c + chunk, stop)], dtype=np.float32)
                    if floats and not np.isfinite(xc).all():
                        last = c + xc.shape[1] - 1
                        raise UserError(f"{where}: input has NaN or infinite values (samples {c}..{last})")
                    out = model(torch.from_numpy(xc))
                    lo, hi = c - start, c - start + xc.shape[1]
                    for name, rec in model.recordings.items():
                        for k, v in rec.items():
                            if k in record:
                                _put(rows, name, k, v, lo, hi, stop - start)
                    _put(rows, "output", key, out, lo, hi, stop - start)
                yield start, rows
                bar.update(stop - start)
    finally:
        bar.close()


def _run_fused(chain, model: SNN, x, T: int, B: int, batch: int, record: tuple[str, ...], quiet: bool,
               where: str) -> Iterator[tuple[int, dict[str, dict[str, np.ndarray]]]]:
    """:func:`run_batches` through :class:`~neuroplastic.simulate_fused.FusedChain`: each batch
    in one kernel call (float32 arrays are read in place; other inputs are converted in chunks
    of at most :data:`CHUNK_BYTES`), the same rows, the same errors."""
    chunk = max(1, CHUNK_BYTES // (4 * T * chain.widest))  # the layer-by-layer chunks (error messages)
    # a C-ordered, writeable float32 array is read in place; anything else is copied to float32
    # in chunks of at most CHUNK_BYTES (as the layer-by-layer path does)
    in_place = type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.writeable
    key = "spikes" if chain.spiking[-1] else "v"
    bar = tqdm(total=B, desc="simulate", unit="sample", disable=True if quiet else None, leave=False)
    try:
        for start in range(0, B, batch):
            stop = min(start + batch, B)
            n = stop - start
            spk, vrec = chain.buffers(n, T)
            step = n if in_place else chunk
            for c in range(start, stop, step):
                e = min(c + step, stop)
                if in_place:
                    flags = chain.run(x, c, e - c, spk, vrec, c - start, n)
                else:
                    flags = chain.run(np.array(x[:, c:e], dtype=np.float32), 0, e - c, spk, vrec, c - start, n)
                if flags.any():
                    first = c + int(np.argmax(flags))
                    c0 = start + (first - start) // chunk * chunk
                    last = min(c0 + chunk, stop) - 1
                    raise UserError(f"{where}: input has NaN or infinite values (samples {c0}..{last})")
            rows: dict[str, dict[str, np.ndarray]] = {}
            views = chain.views(spk, vrec, n, T)
            for name, obs in zip(chain.names, views):
                got = {k: obs[k] for k in ("v", "spikes") if k in record and k in obs}
                if got:
                    rows[name] = got
            rows["output"] = {key: views[-1][key].copy()}
            yield start, rows
            bar.update(n)
    finally:
        bar.close()


def _put(rows: dict, name: str, key: str, t: torch.Tensor, lo: int, hi: int, n: int) -> None:
    """Copy one chunk's ``[T, b, ...]`` observable into ``rows[name][key][lo:hi]`` (``[n, T, m]``,
    samples first; spikes as bool: one byte each)."""
    a = t.detach().reshape(t.shape[0], t.shape[1], -1)
    a = a.to(torch.bool) if key == "spikes" else a.to(torch.float32)
    dst = rows.setdefault(name, {}).get(key)
    if dst is None:
        dst = rows[name][key] = np.empty((n, a.shape[0], a.shape[2]), dtype=bool if key == "spikes" else np.float32)
    dst[lo:hi] = a.transpose(0, 1).numpy()


def deflate(data) -> bytes:
    """``data`` (any C-contiguous buffer) as a zlib stream (RFC 1950, what HDF5's gzip filter
    stores and inflates), deflated at level 1 with the run-length strategy (``Z_RLE``: matches
    only at distance 1). Spike bytes are long runs of zeros: on 3 % spikes ``Z_RLE`` gives
    1.7x the compression of the default strategy and is as fast. By zlib-ng when installed
    (``zlib_ng``, 3x faster), else by Python's ``zlib``; either releases the GIL."""
    c = _zlib.compressobj(1, _zlib.DEFLATED, 15, 9, _zlib.Z_RLE)
    return c.compress(data) + c.flush()


def _write_gzip_chunks(dset, start: int, a: np.ndarray, pool: ThreadPoolExecutor) -> None:
    """``dset[start:start + len(a)] = a`` for a gzip-filtered dataset chunked by samples: the
    chunks that lie wholly in these rows (the last one padded with zeros beyond the dataset's
    end, as HDF5 stores it) are deflated by :func:`deflate` in ``pool`` (it releases the GIL: one
    chunk per core) and stored as they are (``write_direct_chunk``: the same bytes HDF5's
    deflate filter writes, read back by any HDF5 reader); rows sharing a chunk with another
    batch go through h5py."""
    n_all, cb = dset.shape[0], dset.chunks[0]
    stop = start + a.shape[0]
    first = -(-start // cb) * cb
    whole = [c for c in range(first, stop, cb) if min(c + cb, n_all) <= stop]
    if not whole or dset.chunks[1:] != dset.shape[1:]:
        dset[start:stop] = a
        return

    def chunk(c: int) -> bytes:
        block = a[c - start:c - start + cb]
        if block.shape[0] < cb:
            block = np.concatenate([block, np.zeros((cb - block.shape[0], *block.shape[1:]), block.dtype)])
        return deflate(np.ascontiguousarray(block))

    for c, data in zip(whole, pool.map(chunk, whole)):
        dset.id.write_direct_chunk((c, *([0] * (a.ndim - 1))), data)
    if start < whole[0]:
        dset[start:whole[0]] = a[:whole[0] - start]
    end = min(whole[-1] + cb, stop)
    if end < stop:
        dset[end:stop] = a[end - start:]


class _Writer(threading.Thread):
    """Writes the batches :func:`simulate` hands it, one at a time, while the next batch is
    computed (the simulators release the GIL; h5py holds it while it compresses). At most one
    batch waits; an error is kept and raised by :meth:`check` in the calling thread."""

    def __init__(self, write) -> None:
        super().__init__(name="simulate-writer", daemon=True)
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None

    def run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is None:  # after an error keep draining, so that put() never blocks forever
                try:
                    self._write(*item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                    self.error = exc

    def put(self, item) -> None:
        self.check()
        self._queue.put(item)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Wait until every batch handed over is written (or skipped after an error)."""
        self._queue.put(None)
        self.join()


def simulate(model: SNN, x, out: str | Path, *, batch: int = 256, record: Iterable[str] = ("spikes",),
             dt: float | None = None, quiet: bool = False, attrs: dict | None = None,
             where: str = "input", fused: bool | None = None) -> dict[str, float]:
    """Run ``model`` on ``x [T, B, ...]`` (numpy, memmap or h5py dataset) batch by batch and
    write the layout of the module doc to ``out`` atomically. Returns firing rates per layer.
    ``batch``: at most this many samples per pass (fewer when one pass's records would pass
    :data:`CHUNK_BYTES`, see :func:`_piece`; the file does not depend on it). ``fused``: as
    in :func:`run_batches`."""
    from .io import atomic_path

    T, B = _check_input(x, model, where)
    record = tuple(record)
    if dt is None:
        dt = next((m.dt for m in model.modules() if isinstance(m, Neuron)), 1e-3)
    totals: dict[str, list[float]] = {}
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["__type__"] = "NIRGraphData"
        f.attrs["generator"] = "neuroplastic simulate"
        f.attrs["time_steps"], f.attrs["samples"], f.attrs["dt"] = T, B, float(dt)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        nodes = f.create_group("nodes")

        last = list(model.layers)[-1]

        def write(start: int, rows: dict[str, dict[str, np.ndarray]]) -> None:
            for layer, obs in rows.items():
                for key, a in obs.items():
                    g = nodes.require_group(layer)
                    g.attrs["__type__"] = "NIRNodeData"
                    og = g.require_group("observables").require_group(key)
                    if layer == "output" and key in rows.get(last, {}):
                        # the last layer's own observable, written just above: a hard link to it
                        if "data" not in og:
                            og.attrs["__type__"], og.attrs["dt"] = "TimeGriddedData", float(dt)
                            og["data"] = nodes[f"{last}/observables/{key}/data"]
                        continue
                    if "data" not in og:
                        og.attrs["__type__"], og.attrs["dt"] = "TimeGriddedData", float(dt)
                        og.create_dataset("data", shape=(B, T, a.shape[2]), dtype=a.dtype,
                                          chunks=(_chunk_rows(B, T, a.shape[2]), T, a.shape[2]),
                                          compression="gzip" if key == "spikes" else None,
                                          compression_opts=1 if key == "spikes" else None)
                    if key == "spikes":
                        _write_gzip_chunks(og["data"], start, a, pool)
                    else:
                        og["data"][start:start + a.shape[0]] = a

        pool = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="simulate-zlib")
        writer = _Writer(write)
        writer.start()
        try:
            piece = _piece(model, tuple(x.shape[2:]), T, B, batch, record)
            for start, rows in run_batches(model, x, piece, record, quiet, where, fused=fused):
                for layer, obs in rows.items():
                    if "spikes" in obs:
                        acc = totals.setdefault(layer, [0.0, 0.0])
                        acc[0] += float(np.count_nonzero(obs["spikes"]))
                        acc[1] += obs["spikes"].size
                writer.put((start, rows))
        finally:
            writer.close()
            pool.shutdown()
        writer.check()
    return {k: s / n if n else math.nan for k, (s, n) in totals.items()}
