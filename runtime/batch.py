"""Running many stacks: what ``spine-run`` does per input, in one process or on a Dask cluster.

One function, :func:`run_stack` (an input path and the run's options -> its output files written and a
:class:`StackOutcome`), does all the work for one stack, both in the serial loop (:func:`run_serial`) and on
Dask workers (:func:`run_dask`), so both write the same files by construction.

**Inputs** (:func:`expand_inputs`): a file is one stack.  A folder is one stack when it is an OME-Zarr or
its image files are all PNGs named like per-slice files, ``<name>-<NN>.png``
(:func:`~spinedet.runtime.stacks.is_stack_folder`); otherwise it stands for the stacks in it
(:func:`~spinedet.runtime.stacks.stacks_in`: stack files, OME-Zarr folders and per-slice PNG subfolders, by
name, not recursing; hidden files and spine-run's own ``*_overlay.png`` are skipped).

**Output names** (:func:`assign_stems`): every input gets its stem before any runs, in input order, from
its file name (:func:`~spinedet.runtime.stacks.stack_name`); a second input of the same name gets
``<name>-2``, a third ``<name>-3``, so two inputs never overwrite each other and a serial and a parallel run
name their files alike.

**Batch summary** (:func:`batch_csv_text`): a run of more than one stack also writes ``batch_summary.csv``
into the output folder, once all stacks are done (all-or-nothing), one row per stack in input order:
``file`` (the input as given), ``pixel_size_um`` and ``z_step_um`` (as used; empty when unknown),
``slices``, ``spines``, ``seconds`` (wall time of the stack, model loading excluded) and ``error`` (the
one-line error, empty when the stack succeeded; for a failed stack the voxel size, slices and spines are
empty).

**Dask** (:func:`run_dask`, the optional extra ``spinedet[dask]``): a local cluster of N worker processes
running one stack at a time each (onnxruntime threads: ``--threads``), or an existing scheduler by address;
each worker process loads the model once (:func:`detector_for` caches it) and runs :func:`run_stack` per
stack.  Nothing here imports dask until
:func:`run_dask` runs.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SpineDetError
from .postprocess import MAX_AREA_UM2
from .stacks import is_stack_folder, stack_name, stacks_in

#: the file a run of more than one stack writes into its output folder
BATCH_SUMMARY = "batch_summary.csv"
BATCH_COLUMNS = ("file", "pixel_size_um", "z_step_um", "slices", "spines", "seconds", "error")
#: what to install for --workers / --scheduler
DASK_EXTRA = "pip install 'spinedet[dask]'"


# --- inputs --------------------------------------------------------------------------------------------------------

def expand_inputs(paths) -> list[Path]:
    """The stacks that ``paths`` (files and folders, as given on the command line) stand for, in order.

    A folder that is one stack (an OME-Zarr, per-slice PNGs, or without any image file: ``open_stack`` says
    what is wrong with it) stays one input; any other folder becomes the stacks in it
    (:func:`~spinedet.runtime.stacks.stacks_in`).  Paths are kept as given (relative stays relative).
    """
    stacks: list[Path] = []
    for path in map(Path, paths):
        try:
            if path.is_dir() and not is_stack_folder(path):
                stacks.extend(stacks_in(path))
                continue
        except OSError:  # a folder that cannot be listed: open_stack says so, as that input's error
            pass
        stacks.append(path)
    return stacks


def assign_stems(paths) -> list[str]:
    """The output stem of each input, in input order: its stack name, ``<name>-2`` for its second use, ...

    An input that cannot be a stack (missing, not an image) gets its file name's stem and does not count:
    it fails before writing anything.
    """
    seen: dict[str, int] = {}
    stems = []
    for path in map(Path, paths):
        name = stack_name(path)
        if name is None:
            stems.append(path.name.split(".")[0] or "stack")
            continue
        seen[name] = seen.get(name, 0) + 1
        stems.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return stems


# --- one stack -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectorOptions:
    """How to build the :class:`~spinedet.runtime.detector.SpineDetector` (model None: the shipped default;
    None for a threshold or the shaft distance: the model card's; shaft distance ``math.inf``: no shaft check)."""

    model: Path | None = None
    device: str = "cpu"
    batch: int = 8
    threads: int | None = None
    score_threshold: float | None = None
    link_threshold: float | None = None
    max_area_um2: float | None = MAX_AREA_UM2
    shaft_distance_um: float | None = None

    def load(self):
        from .detector import SpineDetector

        return SpineDetector(self.model, device=self.device, batch=self.batch, threads=self.threads,
                             score_threshold=self.score_threshold, max_area_um2=self.max_area_um2,
                             link_threshold=self.link_threshold, shaft_distance_um=self.shaft_distance_um)


@dataclass(frozen=True)
class RunOptions:
    """Everything :func:`run_stack` needs besides the input: the detector, the output folder, reading options
    (channel, µm overrides) and which optional outputs to write."""

    detector: DetectorOptions
    out: Path
    channel: int | None = None
    pixel_size: float | None = None
    z_step: float | None = None
    mip: bool = False
    overlay: bool = False
    overlay_scores: bool = False
    rois: bool = False


@dataclass
class StackOutcome:
    """What :func:`run_stack` did with one input.

    row: its batch summary row (:data:`BATCH_COLUMNS`; numbers as numbers, None where unknown or, for a failed
    stack, not measured; ``error`` None when it succeeded); notes: what the run had to assume, one sentence each;
    error: the one-line error (None: its files were written); spines_csv: its ``_spines.csv``;
    pid, models_loaded: the process that ran it and how many models that process had loaded by then
    (each worker loads one).
    """

    path: Path
    stem: str
    row: dict
    notes: list = field(default_factory=list)
    error: str | None = None
    spines_csv: Path | None = None
    pid: int = 0
    models_loaded: int = 0

    @classmethod
    def failed(cls, path, stem: str, error: str, seconds: float = 0.0) -> "StackOutcome":
        row = dict.fromkeys(BATCH_COLUMNS)
        row.update(file=str(path), seconds=round(seconds, 3), error=error)
        return cls(Path(path), stem, row, error=error, pid=os.getpid(), models_loaded=_LOADS[0])


_DETECTORS: dict = {}
_LOADS = [0]  # models this process has loaded
_LOCK = threading.Lock()


def detector_for(options: DetectorOptions):
    """The detector for ``options``, loaded once per process and then reused (a Dask worker loads it once)."""
    with _LOCK:
        if options not in _DETECTORS:
            _DETECTORS[options] = options.load()
            _LOADS[0] += 1
        return _DETECTORS[options]


def release_detectors() -> None:
    """Close and forget the detectors :func:`detector_for` loaded in this process (after a serial run)."""
    with _LOCK:
        while _DETECTORS:
            _DETECTORS.popitem()[1].close()


def run_settings(detector, options: RunOptions) -> dict:
    """The ``settings`` of each input's summary JSON."""
    return {"score_threshold": detector.score_threshold, "link_threshold": detector.link_threshold,
            "max_area_um2": options.detector.max_area_um2, "shaft_distance_um": detector.shaft_distance_um,
            "nms_iom": detector.nms_iom,
            "link_iom": detector.link_iom, "max_misses": detector.max_misses, "batch": options.detector.batch,
            "device": detector.backend.device, "channel": options.channel}


def run_stack(path, stem: str, options: RunOptions, progress=None) -> StackOutcome:
    """Detect spines in the stack at ``path`` and write its files as ``<out>/<stem>_*`` all-or-nothing.

    progress: called as ``progress(slices done, slices)``, and ``progress.close()`` at the end (None: silent).
    A failure a user can cause is returned as the outcome's one-line error (nothing was written for it);
    another exception too, as an internal error, unless ``SPINEDET_DEBUG`` is set (then it is raised).
    KeyboardInterrupt is raised.
    """
    from .files import write_all
    from .reports import report_files
    from .stacks import open_stack

    path = Path(path)
    start = time.perf_counter()
    try:
        detector = detector_for(options.detector)
        start = time.perf_counter()  # model loading is not the stack's time
        with open_stack(path, channel=options.channel, pixel_size=options.pixel_size,
                        z_step=options.z_step) as stack:
            result = detector.detect(stack, mip=options.mip, projection=options.overlay, progress=progress)
        files = report_files(result, path, options.out, stem, detector.model_path, run_settings(detector, options),
                             options.overlay, options.overlay_scores, options.rois,
                             model_precision=detector.card.precision)
        write_all(files)
    except SpineDetError as exc:
        return StackOutcome.failed(path, stem, str(exc.with_path(path)), time.perf_counter() - start)
    except Exception as exc:
        if os.environ.get("SPINEDET_DEBUG"):
            raise
        return StackOutcome.failed(path, stem, f"{path}: internal error {type(exc).__name__}: {exc} "
                                               "(set SPINEDET_DEBUG=1 for details)", time.perf_counter() - start)
    finally:
        if progress is not None:
            progress.close()
    voxel = result.voxel_size
    row = {"file": str(path), "pixel_size_um": _six_digits(voxel.x_um), "z_step_um": _six_digits(voxel.z_um),
           "slices": result.shape[0], "spines": len(result.spines),
           "seconds": round(time.perf_counter() - start, 3), "error": None}
    return StackOutcome(path, stem, row, list(result.notes), None, Path(options.out) / f"{stem}_spines.csv",
                        os.getpid(), _LOADS[0])


def outcome_record(outcome: StackOutcome) -> dict:
    """One stack's outcome as plain JSON values: its batch row, its notes and its ``_spines.csv`` (None for a
    failed stack)."""
    return {**outcome.row, "notes": list(outcome.notes),
            "spines_csv": None if outcome.spines_csv is None else str(outcome.spines_csv)}


def _six_digits(value: float | None) -> float | None:
    """A voxel size to the 6 significant digits the batch table shows."""
    return None if value is None else float(f"{value:.6g}")


def _cell(key: str, value) -> str:
    """A batch row's value as its CSV cell: empty for None, voxel sizes with 6 significant digits."""
    if value is None:
        return ""
    return f"{value:.6g}" if key in ("pixel_size_um", "z_step_um") else str(value)


def batch_csv_text(outcomes) -> str:
    """``batch_summary.csv``: one row per outcome (:data:`BATCH_COLUMNS`), in the order given."""
    out = io.StringIO()
    writer = csv.DictWriter(out, BATCH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for outcome in outcomes:
        writer.writerow({key: _cell(key, value) for key, value in outcome.row.items()})
    return out.getvalue()


# --- many stacks ---------------------------------------------------------------------------------------------------

class Interrupted(KeyboardInterrupt):
    """The run was interrupted (Ctrl-C); the message says what was written."""


def run_serial(paths, stems, options: RunOptions, on_done=lambda outcome: None, progress_for=None) -> list:
    """:func:`run_stack` on each input in turn; ``on_done(outcome)`` after each.

    progress_for(index, path): the progress display of one stack's slices (None: none).
    """
    outcomes = []
    for k, (path, stem) in enumerate(zip(paths, stems)):
        try:
            outcome = run_stack(path, stem, options, progress_for(k, path) if progress_for else None)
        except KeyboardInterrupt:
            raise Interrupted(f"{path}: interrupted; no output was written for it") from None
        outcomes.append(outcome)
        on_done(outcome)
    return outcomes


def require_distributed() -> None:
    """Raise SpineDetError naming the pip command when dask.distributed is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise SpineDetError(f"--workers and --scheduler need dask.distributed: {DASK_EXTRA}") from None


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None):
    """A ``distributed.Client``: on a new local cluster of ``workers`` single-threaded processes, or connected
    to the scheduler at ``scheduler`` (``tcp://host:8786``; a dask-jobqueue cluster's ``scheduler_address``)."""
    require_distributed()
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise SpineDetError(f"cannot connect to the Dask scheduler at {scheduler} ({exc})") from None
        with client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def run_dask(paths, stems, options: RunOptions, workers: int | None = None, scheduler: str | None = None,
             on_done=lambda outcome: None) -> list:
    """:func:`run_stack` on each input on a Dask cluster (see :func:`dask_client`); ``on_done(outcome)`` as each
    finishes (in completion order).  Returns the outcomes in input order.

    Input and output paths are sent as given: on a remote cluster they must name the same files on the workers
    (absolute paths on a shared file system).  ``--threads`` (``options.detector.threads``) is per worker.  A
    task that fails on the worker beyond run_stack's own error handling (a worker killed, say) is that stack's
    internal error.
    """
    from distributed import as_completed

    paths, stems = list(paths), list(stems)
    outcomes: list = [None] * len(paths)
    with dask_client(workers, scheduler) as client:
        futures = client.map(run_stack, paths, stems, [options] * len(paths), pure=False)
        index = {future.key: k for k, future in enumerate(futures)}
        try:
            for future in as_completed(futures):
                k = index[future.key]
                try:
                    outcome = future.result()
                except Exception as exc:
                    if os.environ.get("SPINEDET_DEBUG"):
                        raise
                    outcome = StackOutcome.failed(paths[k], stems[k], f"{paths[k]}: internal error on a Dask worker "
                                                  f"{type(exc).__name__}: {exc} (set SPINEDET_DEBUG=1 for details)")
                outcomes[k] = outcome
                on_done(outcome)
        except KeyboardInterrupt:
            client.cancel(futures)
            done = sum(o is not None for o in outcomes)
            raise Interrupted(f"interrupted; the outputs of the {done} of {len(paths)} stacks that were done are "
                              "written, nothing for the others") from None
    return outcomes
