"""Writing a benchmark result: results.json (everything), results.md (tables), chart.png (end-to-end per video)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from t2v_fast.atomic import atomic_path


def _ms(stage: dict[str, Any]) -> str:
    return f"{stage['median_s'] * 1e3:.1f} / {stage['p90_s'] * 1e3:.1f}"


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f}"


def markdown(result: dict[str, Any]) -> str:
    machine, config = result["machine"], result["config"]
    params = config["resolved_params"]
    chip = machine.get("gpu") or machine.get("cpu")
    lines = [
        f"# Benchmark: {config['preset']} ({config['family']}), {params['frames']} frames"
        f" {params['width']}×{params['height']}, {params['steps']} steps, {config['videos']} video(s) per batch,"
        f" {config['dtype']} on {config['device']}",
        "",
        f"{result['date']}; {chip}, {machine['cpu_cores']} cores"
        + (f", {machine['memory_gib']} GiB" if "memory_gib" in machine else "")
        + f", torch {machine['torch']}.",
    ]
    if "backends" in result and "matmul_ceiling" in result:
        lines += _backends_table(result)
    elif "backends" in result:  # written after each contender, before the figures derived from all of them
        lines += ["", "Partial run, contenders so far (end to end per video, median s):", ""]
        lines += [f"- {name}: {_partial(r)}" for name, r in result["backends"].items()]
    if "memory_sweep" in result:
        lines += _memory_table(result["memory_sweep"])
    if "throughput" in result:
        t = result["throughput"]
        lines += [
            "",
            f"Throughput (torch backend, {t['videos']} videos): {t['sequential_videos_per_hour']:.0f} videos/hour one"
            f" prompt per call, {t['batched_videos_per_hour']:.0f} videos/hour batched in one call.",
        ]
    if "fast" in result:
        lines += _fast_table(result["fast"])
    if "guided" in result:
        lines += _section_table("## Guided video (ControlNet)", result["guided"], "guided_step", _guided_intro)
    if "edit" in result:
        lines += _section_table("## Video editing (Instruct-Pix2Pix)", result["edit"], "edit_step", _edit_intro)
    return "\n".join([*lines, ""])


def _partial(r: dict[str, Any]) -> str:
    if not r.get("available"):
        return f"not available: {r['reason']}"
    return f"{r['stages']['end_to_end_per_video']['median_s']:.3f}"


def _backends_table(result: dict[str, Any]) -> list[str]:
    ceiling, flops = result["matmul_ceiling"], result["flops"]
    lines = [
        f"Matmul ceiling ({ceiling['dtype']}, n={ceiling['n']}): {ceiling['tflops']:.3f} TFLOP/s.",
        f"FLOPs (counted): {flops['unet_call'] / 1e9:.1f} G per UNet call, {flops['per_video'] / 1e9:.1f} G per video.",
        "",
        "Times: median / p90 in ms over warm runs; end to end is per video; speed-up is the reference's end to end"
        " over the backend's, both measured in this run.",
        "",
        "| backend | end to end | speed-up | UNet call | text | VAE decode | UNet TFLOP/s (of ceiling)"
        " | peak memory MiB | max px diff vs ref | cold start s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in result["backends"].items():
        if not r.get("available"):
            lines.append(f"| {name} | not available: {r['reason']} | | | | | | | | |")
            continue
        s = r["stages"]
        speedup = f"{r['speedup_vs_reference']:.2f}×" if "speedup_vs_reference" in r else "-"
        cold = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in r["cold_start"].items())
        lines.append(
            f"| {name} | {_ms(s['end_to_end_per_video'])} | {speedup} | {_ms(s['unet_call'])}"
            f" | {_ms(s['text_encoding'])} | {_ms(s['vae_decode'])}"
            f" | {r['unet_tflops']:.3f} ({100 * r['unet_fraction_of_ceiling']:.0f} %)"
            f" | {_mib(r['peak_memory_bytes'])} | {r.get('max_pixel_diff_vs_reference', '-')} | {cold} |"
        )
    fidelity = result["dtype_fidelity"]
    if fidelity["compared"]:
        lines += [
            "",
            f"{fidelity['dtype']} against float32 (torch backend, same seeds): max pixel difference"
            f" {fidelity['max_pixel_diff_vs_float32']}, mean {fidelity['mean_pixel_diff_vs_float32']:.2f} (of 255).",
        ]
    return lines


def _pair(values: dict[str, Any] | None) -> str:
    return "-" if values is None else f"{values['max']} / {values['mean']:.2f}"


def _number(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _fast_table(fast: dict[str, Any]) -> list[str]:
    """Exact (cache interval 1) and fast mode at each interval, per contender."""
    intervals = ", ".join(str(n) for n in fast["intervals"][1:])
    lines = [
        "",
        f"## Fast mode (DeepCache), cache intervals {intervals}, branch {fast['branch']}",
        "",
        "Interval 1 is the exact run. The reference's fast rows are diffusers' pipeline with DeepCache 0.1.1's"
        " `DeepCacheSDHelper`, its cache reset at each of the pipeline's denoising loops. End to end: median / p90 ms"
        " per video over warm runs. UNet: seconds of all UNet calls in one more warm run (each call synchronised),"
        " per video; calls full (the whole UNet) / shallow, and the median ms of each kind. FLOPs: counted per video"
        " with `torch.utils.flop_counter` on the calls (ONNX Runtime and TensorRT rows: the torch backend's count, the"
        " same graphs). Speed-ups: end to end, over the same contender's exact run and over the reference's exact"
        " run. Drift: |fast − exact| per pixel of the same contender (0-255), max / mean; beside it our frames"
        " against the reference's at the same interval. Flicker: the nightly QC's `temporal_flickering` (VBench:"
        " 1 = frozen) and verdict (`t2v_fast.bulk.qc`, default thresholds"
        f" {', '.join(f'{k} {v}' for k, v in fast['qc_thresholds'].items())}).",
        "",
        f"{fast['note'][0].upper()}{fast['note'][1:]}.",
        "",
        "| contender | interval | end to end ms | speed-up vs exact | vs reference exact | UNet s/video"
        " | UNet calls full / shallow | ms per full / shallow call | GFLOPs/video | FLOPs vs exact"
        " | drift vs exact max / mean | vs reference same interval | temporal flickering | QC verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in fast["contenders"].items():
        if not entry["available"]:
            lines.append(f"| {name} | - | not available: {entry['reason']} | | | | | | | | | | | |")
            continue
        for r in entry["runs"]:
            interval = r["cache_interval"]
            if not r["available"]:
                lines.append(f"| {name} | {interval} | not available: {r['reason']} | | | | | | | | | | | |")
                continue
            unet, flops = r["unet"], r.get("flops_per_video")
            lines.append(
                f"| {name} | {interval} | {_ms(r['end_to_end_per_video'])}"
                f" | {_ratio(r.get('speedup_vs_exact'))} | {_ratio(r.get('speedup_vs_reference_exact'))}"
                f" | {unet['seconds_per_video']:.3f} | {unet['full_calls']} / {unet['shallow_calls']}"
                f" | {_number(unet['full_call_median_s'], 1e3, 1)} / {_number(unet['shallow_call_median_s'], 1e3, 1)}"
                f" | {_number(flops, 1e-9, 1)} | {_number(r.get('flops_ratio_vs_exact'), digits=3)}"
                f" | {_pair(r.get('drift_vs_exact'))} | {_pair(r.get('diff_vs_reference_same_interval'))}"
                f" | {_number(r['qc'].get('temporal_flickering'), digits=4)} | {r['qc']['verdict']} |"
            )
    return lines


def _guided_intro(guided: dict[str, Any]) -> str:
    """What the guided section's rows race: its ControlNet and control video, the reference recipe."""
    video = guided["control_video"]
    return (
        f"ControlNet `{guided['controlnet']}` over the run's model; control video {video['frames']} frames"
        f" {video['width']}×{video['height']}: {guided['note']}. The reference is diffusers'"
        " `StableDiffusionControlNetPipeline` with `CrossFrameAttnProcessor` on the UNet and the ControlNet, DDIM,"
        " eta 0, one noise draw repeated over the frames (one video per call). Times: median / p90 in ms over warm"
        " runs; a guided step is the ControlNet and the UNet at the full video batch with guidance; end to end is per"
        " video; speed-ups are the reference's figure over the contender's, both measured in this run. ONNX Runtime's"
        f" export: {guided['onnx_engines']['source']}."
    )


def _edit_intro(edit: dict[str, Any]) -> str:
    """What the edit section's rows race: its model, instruction and input video, the reference recipe."""
    video = edit["input_video"]
    return (
        f'Model `{edit["model"]}`, instruction "{edit["instruction"]}", guidance {edit["guidance"]}, image guidance'
        f" {edit['image_guidance']}; input video {video['frames']} frames {video['width']}×{video['height']}:"
        f" {edit['note']}. The reference is diffusers' `StableDiffusionInstructPix2PixPipeline` with"
        " `CrossFrameAttnProcessor(batch_size=3)` on the UNet, the checkpoint's Euler ancestral scheduler, one CPU"
        " generator per video (one video per call). Times: median / p90 in ms over warm runs; an edit step is the UNet"
        " on the noisy latents beside the input frames' latents at the full video batch with its three branches; end"
        " to end is per video; speed-ups are the reference's figure over the contender's, both measured in this run."
        f" ONNX Runtime's export: {edit['onnx_engines']['source']}."
    )


def _section_table(title: str, section: dict[str, Any], step: str, intro: Callable[[dict[str, Any]], str]) -> list[str]:
    """A section racing our backends against its reference recipe (guided, edit): what it races (`intro`), then one
    row per contender with the backends table's stages, its denoising step named `step`."""
    lines = ["", title, ""]
    if not section["available"]:
        return [*lines, f"Not available: {section['reason']}."]
    lines += [
        intro(section),
        "",
        f"| contender | end to end | speed-up | {step.replace('_', ' ')} | step speed-up | text | VAE decode"
        " | peak memory MiB | px diff vs ref max / mean | cold start s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in section["contenders"].items():
        if not r.get("available"):
            lines.append(f"| {name} | not available: {r['reason']} | | | | | | | | |")
            continue
        s, ratios = r["stages"], r.get("stage_speedups_vs_reference", {})
        cold = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in r["cold_start"].items())
        lines.append(
            f"| {name} | {_ms(s['end_to_end_per_video'])} | {_ratio(r.get('speedup_vs_reference'))}"
            f" | {_ms(s[step])} | {_ratio(ratios.get(step))} | {_ms(s['text_encoding'])}"
            f" | {_ms(s['vae_decode'])} | {_mib(r['peak_memory_bytes'])} | {_pair(r.get('pixel_diff_vs_reference'))}"
            f" | {cold} |"
        )
    return lines


def _memory_table(sweep: list[dict[str, Any]]) -> list[str]:
    """Peak memory per frame count; with the peak without our memory savings when the sweep measured it."""
    compared = any("without_savings" in row for row in sweep)
    lines = [
        "",
        "Memory sweep (one video, torch backend, 2 steps; Text2Video-Zero chunked beyond the chunk size; ModelScope"
        " also without feed-forward chunking and sliced decoding, as the reference runs):",
        "",
        "| frames | chunk size | peak memory MiB | added during the run MiB | seconds |"
        + (" without savings: peak / added MiB | seconds |" if compared else ""),
        "| --- | --- | --- | --- | --- |" + (" --- | --- |" if compared else ""),
    ]
    for m in sweep:
        line = (
            f"| {m['frames']} | {m['chunk_size'] or '-'} | {_mib(m['peak_memory_bytes'])} | {_mib(m['added_bytes'])}"
            f" | {m['seconds']:.1f} |"
        )
        if baseline := m.get("without_savings"):
            line += (
                f" {_mib(baseline['peak_memory_bytes'])} / {_mib(baseline['added_bytes'])}"
                f" | {baseline['seconds']:.1f} |"
            )
        lines.append(line)
    return lines


def chart(result: dict[str, Any]) -> Image.Image:
    """Horizontal bars: end-to-end seconds per video of each available backend, then of each row of the fast, guided
    and edit sections."""
    bars = [
        (name, r["stages"]["end_to_end_per_video"]["median_s"])
        for name, r in result.get("backends", {}).items()
        if r.get("available")
    ]
    bars += [
        (
            f"{name} {'exact' if r['cache_interval'] == 1 else 'fast ' + str(r['cache_interval'])}",
            r["end_to_end_per_video"]["median_s"],
        )
        for name, entry in result.get("fast", {}).get("contenders", {}).items()
        for r in entry.get("runs", [])
        if r["available"]
    ]
    bars += [
        (f"{section} {name}", r["stages"]["end_to_end_per_video"]["median_s"])
        for section in ("guided", "edit")
        for name, r in result.get(section, {}).get("contenders", {}).items()
        if r.get("available")
    ]
    width, row, left = 720, 36, 150
    image = Image.new("RGB", (width, 60 + row * max(len(bars), 1)), "white")
    draw = ImageDraw.Draw(image)
    config = result["config"]
    draw.text((10, 10), f"end to end per video, median (s): {config['preset']} on {config['device']}", fill="black")
    longest = max((s for _, s in bars), default=1.0)
    for i, (name, seconds) in enumerate(bars):
        top = 40 + i * row
        draw.text((10, top + 8), name, fill="black")
        length = int((width - left - 90) * seconds / longest)
        draw.rectangle(
            [left, top + 4, left + length, top + row - 8], fill="#999999" if "reference" in name else "#4a78c2"
        )
        draw.text((left + length + 6, top + 8), f"{seconds:.2f}", fill="black")
    return image


def write_outputs(result: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "results.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    with atomic_path(folder / "results.md") as tmp:
        tmp.write_text(markdown(result))
    with atomic_path(folder / "chart.png") as tmp:
        chart(result).save(tmp, format="PNG")
