"""The fast section: exact against fast mode (DeepCache, `t2v_fast.core.deepcache`) at a few cache intervals, on each
of our backends and on the reference, in one run.

The reference's fast mode is DeepCache's own `DeepCacheSDHelper` on diffusers' `TextToVideoZeroPipeline`, its cache
reset at each of the pipeline's denoising loops (`backward_loop`): as published, the helper reuses a feature cached
while the first frame alone was denoised once all frames are, and fails there. The helper covers UNet2D pipelines
only, so a ModelScope run has the reference's exact row and our fast rows.

Per row: end to end per video (median of warm runs), the UNet's share (one more run with every UNet call timed and
synchronised, by kind: full calls, which run the whole UNet, and shallow ones), FLOPs counted per video on the actual
calls, speed-ups over the same contender's exact run and over the reference's, pixel drift from the same contender's
exact frames, and the nightly QC's flicker measures (`t2v_fast.bulk.qc.measure`, default thresholds).
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from t2v_fast.bulk import qc
from t2v_fast.core.deepcache import EXPORTED_BRANCH
from t2v_fast.core.families import TEXT2VIDEO_ZERO
from t2v_fast.core.pipeline import VideoPipeline

from .measure import count_flops, pixel_diff, synchronize, timed
from .runners import ModelScopeReferenceRunner, PipelineRunner, ReferenceRunner, Unavailable, Workload

if TYPE_CHECKING:
    from .harness import BenchConfig

# Our contenders with a fast mode (torch-compiled compiles the whole UNet only; its fast steps would run eager), after
# the reference, whose exact run every speed-up is also taken against.
FAST_CONTENDERS = ("reference", "torch", "onnxruntime", "tensorrt")
# The branch every fast row runs: the one exported graphs and engines are built for (DeepCache's default, the fastest).
FAST_BRANCH = EXPORTED_BRANCH
# What every fast result says about its drift figures.
DRIFT_CAVEAT = "drift is measured on random weights; quality on trained weights is not measured here"

Render = Callable[[], np.ndarray]


@dataclass
class UnetClock:
    """Synchronised seconds of each UNet call of a run, by kind: `full` (the whole UNet, exact or caching) and
    `shallow` (the shallow branch from a cached feature)."""

    device: torch.device
    seconds: dict[str, list[float]] = field(default_factory=lambda: {"full": [], "shallow": []})

    def wrap(self, call: Callable[..., Any], kind: str) -> Callable[..., Any]:
        def clocked(*args: Any, **kwargs: Any) -> Any:
            synchronize(self.device)
            started = time.perf_counter()
            result = call(*args, **kwargs)
            synchronize(self.device)
            self.seconds[kind].append(time.perf_counter() - started)
            return result

        return clocked

    def summary(self, videos: int) -> dict[str, Any]:
        full, shallow = self.seconds["full"], self.seconds["shallow"]
        return {
            "seconds_per_video": (sum(full) + sum(shallow)) / videos,
            "full_calls": len(full),
            "shallow_calls": len(shallow),
            "full_call_median_s": statistics.median(full) if full else None,
            "shallow_call_median_s": statistics.median(shallow) if shallow else None,
        }


# A backend's UNet entry points (`t2v_fast.runtime.ModelBackend`) and the kind of call each is.
UNET_CALLS = {"predict_noise": "full", "predict_noise_caching": "full", "predict_noise_cached": "shallow"}


class OurContender:
    """Our pipeline on one backend, rendering at a given cache interval."""

    def __init__(self, pipeline: VideoPipeline, work: Workload):
        self.pipeline, self.work = pipeline, work

    @contextmanager
    def at(self, interval: int) -> Iterator[Render]:
        params = {**self.work.params, "cache_interval": interval, "cache_branch": FAST_BRANCH}
        work = self.work

        def render() -> np.ndarray:
            videos = self.pipeline.generate(
                work.prompts, negative_prompt=work.negative_prompt, seed=work.seeds, progress=False, **params
            )
            return np.stack([v.frames for v in videos])

        yield render

    @contextmanager
    def clocked(self, clock: UnetClock) -> Iterator[None]:
        """The backend's UNet calls timed, through instance attributes over its methods (removed on exit)."""
        backend = self.pipeline.backend
        for name, kind in UNET_CALLS.items():
            setattr(backend, name, clock.wrap(getattr(backend, name), kind))
        try:
            yield
        finally:
            for name in UNET_CALLS:
                delattr(backend, name)


class ReferenceContender:
    """The family's diffusers pipeline; its fast mode DeepCache's helper (Text2Video-Zero only)."""

    def __init__(self, runner: ReferenceRunner | ModelScopeReferenceRunner, work: Workload):
        self.runner, self.work = runner, work
        self.helper: Any = None
        self.interval = 1

    @contextmanager
    def at(self, interval: int) -> Iterator[Render]:
        def render() -> np.ndarray:
            return self.runner.generate(self.work)

        if interval == 1:
            yield render
            return
        if self.work.card.family != TEXT2VIDEO_ZERO.name:
            raise Unavailable(
                "DeepCache's helper does not cover ModelScope's UNet3D (its temporal layers would still run)"
            )
        if importlib.util.find_spec("DeepCache") is None:
            raise Unavailable("DeepCache is not installed (pip install DeepCache==0.1.1)")
        with deep_cache_helper(self.runner.pipe, interval, FAST_BRANCH) as helper:
            self.helper, self.interval = helper, interval
            try:
                yield render
            finally:
                self.helper, self.interval = None, 1

    def _kind(self) -> str:
        """The call that just ran: full unless the helper served its deep blocks from its cache."""
        helper = self.helper
        if helper is None or (helper.cur_timestep - helper.start_timestep) % self.interval == 0:
            return "full"
        return "shallow"

    @contextmanager
    def clocked(self, clock: UnetClock) -> Iterator[None]:
        """The UNet's calls timed by hooks around its `forward` (which the helper replaces)."""
        unet, device, started = self.runner.pipe.unet, self.work.device, []

        def before(module: Any, args: Any) -> None:
            synchronize(device)
            started.append(time.perf_counter())

        def after(module: Any, args: Any, output: Any) -> None:
            synchronize(device)
            clock.seconds[self._kind()].append(time.perf_counter() - started.pop())

        hooks = [unet.register_forward_pre_hook(before), unet.register_forward_hook(after)]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()


@contextmanager
def deep_cache_helper(pipe: Any, interval: int, branch: int) -> Iterator[Any]:
    """DeepCache's `DeepCacheSDHelper` on a `TextToVideoZeroPipeline`, its cache dropped at each `backward_loop`: a
    new loop starts at another batch shape (the first frame alone, then all frames), where nothing is cached."""
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    loop = pipe.backward_loop

    def backward_loop(*args: Any, **kwargs: Any) -> Any:
        helper.cached_output, helper.start_timestep = {}, None
        return loop(*args, **kwargs)

    pipe.backward_loop = backward_loop
    try:
        yield helper
    finally:
        del pipe.backward_loop  # the class's method again
        helper.disable()


Contender = OurContender | ReferenceContender


def _measure(
    contender: Contender, interval: int, work: Workload, warmup: int, repeats: int, count: bool
) -> dict[str, Any]:
    """One row: end-to-end runs after `warmup` unmeasured ones (a new interval's first run meets new shapes), one run
    with its UNet calls timed (its frames kept), and, where `count`, the FLOPs of one more run."""
    with contender.at(interval) as render:
        end_to_end = timed(render, work.device, warmup, repeats)
        clock = UnetClock(work.device)
        with contender.clocked(clock):
            frames = render()
        flops = count_flops(render) // work.videos if count else None
    row: dict[str, Any] = {
        "cache_interval": interval,
        "available": True,
        "end_to_end_per_video": {
            k: [v / work.videos for v in value] if isinstance(value, list) else value / work.videos
            for k, value in end_to_end.items()
        },
        "unet": clock.summary(work.videos),
        "qc": _qc(frames),
        "_frames": frames,
    }
    if flops is not None:
        row["flops_per_video"] = flops
    return row


def _qc(frames: np.ndarray) -> dict[str, Any]:
    """The nightly QC's measures of each video (`qc.measure`, default thresholds), averaged; the row's verdict."""
    thresholds = qc.QcThresholds()
    measured = [qc.measure(video, thresholds) for video in frames]
    names = ("temporal_flickering", "flicker_mad", "ssim")
    means = {name: float(np.mean([m[name] for m in measured])) for name in names if name in measured[0]}
    return {**means, "verdict": qc.row_verdict(measured, thresholds)}


def _rows(
    contender: Contender, intervals: tuple[int, ...], work: Workload, warmup: int, repeats: int, count: bool
) -> list[dict[str, Any]]:
    """A contender's row per interval; a failing interval (a backend without fast mode) is reported, not raised."""
    rows = []
    for interval in intervals:
        try:
            rows.append(_measure(contender, interval, work, warmup, repeats, count))
        except Unavailable as why:
            rows.append({"cache_interval": interval, "available": False, "reason": str(why)})
        except Exception as error:  # e.g. an engine directory without fast mode's graphs: the other rows still run
            failed = f"failed: {type(error).__name__}: {error}"
            rows.append({"cache_interval": interval, "available": False, "reason": failed})
    return rows


def _flop_counts(eager: VideoPipeline, work: Workload, intervals: tuple[int, ...]) -> dict[int, int]:
    """FLOPs per video of our pipeline at each interval, counted on the torch backend's calls (ONNX Runtime and
    TensorRT run the same graphs, which FlopCounterMode cannot see into)."""
    counts = {}
    ours = OurContender(eager, work)
    for interval in intervals:
        with ours.at(interval) as render:
            counts[interval] = count_flops(render) // work.videos
    return counts


def _derive(rows: list[dict[str, Any]], reference_exact: dict[str, Any] | None, reference: dict[int, Any]) -> None:
    """Each row against its contender's exact row (speed-ups, FLOPs ratio, drift), the reference's exact run, and
    the reference at the same interval (our fast mode against DeepCache's)."""
    exact = next((r for r in rows if r["cache_interval"] == 1 and r["available"]), None)
    for row in rows:
        if not row["available"]:
            continue
        seconds = row["end_to_end_per_video"]["median_s"]
        if reference_exact is not None:
            row["speedup_vs_reference_exact"] = reference_exact["end_to_end_per_video"]["median_s"] / seconds
        if exact is not None:
            row["speedup_vs_exact"] = exact["end_to_end_per_video"]["median_s"] / seconds
            row["unet_speedup_vs_exact"] = exact["unet"]["seconds_per_video"] / row["unet"]["seconds_per_video"]
            row["flops_ratio_vs_exact"] = row["flops_per_video"] / exact["flops_per_video"]
            row["drift_vs_exact"] = pixel_diff(row["_frames"], exact["_frames"])
        same = reference.get(row["cache_interval"])
        if same is not None and same is not row:
            row["diff_vs_reference_same_interval"] = pixel_diff(row["_frames"], same["_frames"])


def run_fast(
    config: BenchConfig,
    work: Workload,
    makers: dict[str, Callable[[], Any]],
    load: Callable[[], VideoPipeline],
    on_contender: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """The section: every selected contender of `FAST_CONTENDERS` exact and at each of `config.fast_intervals`;
    `on_contender` gets the section so far after each contender."""
    intervals = (1, *config.fast_intervals)
    section: dict[str, Any] = {
        "branch": FAST_BRANCH,
        "intervals": list(intervals),
        "qc_thresholds": asdict(qc.QcThresholds()),
        "note": DRIFT_CAVEAT,
        "contenders": {},
    }
    reference: dict[int, Any] = {}  # the reference's available rows by interval, with their frames
    ours_flops: dict[int, int] | None = None
    kept: list[dict[str, Any]] = []  # every row holding frames, stripped of them at the end
    for name in FAST_CONTENDERS:
        if name not in config.backends:
            reason = "not selected for this run" + (" (--quick)" if config.quick else "")
            section["contenders"][name] = {"available": False, "reason": reason}
            continue
        try:
            runner = makers[name]()
            runner.load(work)
            if name == "reference":
                rows = _rows(ReferenceContender(runner, work), intervals, work, config.warmup, config.repeats, True)
                reference = {r["cache_interval"]: r for r in rows if r["available"]}
            else:
                if ours_flops is None:
                    ours_flops = _flop_counts(load(), work, intervals)
                assert isinstance(runner, PipelineRunner) and runner.pipeline is not None
                rows = _rows(OurContender(runner.pipeline, work), intervals, work, config.warmup, config.repeats, False)
                for row in rows:
                    if row["available"]:
                        row["flops_per_video"] = ours_flops[row["cache_interval"]]
            _derive(rows, reference.get(1), reference)
            kept += rows
            entry: dict[str, Any] = {"available": True, "runs": rows}
        except Unavailable as reason:
            entry = {"available": False, "reason": str(reason)}
        except Exception as error:  # one failing contender must not cost the rest
            entry = {"available": False, "reason": f"failed: {type(error).__name__}: {error}"}
        section["contenders"][name] = entry
        print(f"fast {name}: {_one_line(entry)}", flush=True)
        on_contender(_without_frames(section))
    for row in kept:
        row.pop("_frames", None)
    return section


def _without_frames(section: dict[str, Any]) -> dict[str, Any]:
    contenders = {
        name: {**entry, "runs": [{k: v for k, v in r.items() if k != "_frames"} for r in entry["runs"]]}
        if "runs" in entry
        else entry
        for name, entry in section["contenders"].items()
    }
    return {**section, "contenders": contenders}


def _one_line(entry: dict[str, Any]) -> str:
    if not entry["available"]:
        return f"not available: {entry['reason']}"
    return ", ".join(
        f"×{r['cache_interval']} {r['end_to_end_per_video']['median_s']:.3f} s/video"
        if r["available"]
        else f"×{r['cache_interval']} {r['reason']}"
        for r in entry["runs"]
    )
