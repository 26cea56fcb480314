"""An animation of one sample's spikes over time: every layer as a grid of neurons that light
up when they spike (and fade over the next steps), with the layers' population rates below
and a cursor at the current time.

GIF by default (Pillow, which ships with matplotlib: no ffmpeg needed); MP4 when the path ends
with ``.mp4`` and ``ffmpeg`` is on the PATH -- without it, a one-line note on stderr and the GIF
next to the requested path (same stem, ``.gif``). Files are written to a temporary name and
renamed, so an interrupted write leaves nothing behind. Long runs are shown in at most
``max_frames`` frames (each frame then covers several steps: a neuron lights up if it spiked
in any of them), so a GIF stays small and quick to write.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .runs import Run
from .spikes import probe_spikes, run_dt, task_label, time_axis
from .style import NoData, new_figure

__all__ = ["animate_spikes", "animate_run"]

#: fraction of a neuron's brightness left after each frame (the fading trail of a spike)
DECAY = 0.45


def _write_gif(frames: list[np.ndarray], path: Path, fps: float) -> None:
    """RGBA frames -> an animated GIF with one shared palette (unchanged regions cost nothing)."""
    from PIL import Image

    rgb = [Image.fromarray(f[..., :3]) for f in frames]
    # palette: the first frame plus the last (the most colours), adaptive, 128 colours
    w, h = rgb[0].size
    src = Image.new("RGB", (w, 2 * h))
    src.paste(rgb[0], (0, 0))
    src.paste(rgb[-1], (0, h))
    pal = src.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    pf = [im.quantize(palette=pal, dither=Image.Dither.NONE) for im in rgb]
    pf[0].save(path, format="GIF", save_all=True, append_images=pf[1:], duration=max(20, int(round(1000 / fps))),
               loop=0)


def _write_mp4(frames: list[np.ndarray], path: Path, fps: float) -> None:
    """RGBA frames -> H.264 MP4 through ffmpeg (even frame size for yuv420p)."""
    import subprocess

    h, w = frames[0].shape[:2]
    cmd = [shutil.which("ffmpeg") or "ffmpeg", "-loglevel", "error", "-f", "rawvideo", "-vcodec", "rawvideo",
           "-s", f"{w}x{h}", "-pix_fmt", "rgba", "-framerate", f"{fps:g}", "-i", "pipe:",
           "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2:color=white", "-vcodec", "h264", "-pix_fmt", "yuv420p",
           "-f", "mp4", "-y", str(path)]
    proc = subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames), capture_output=True)
    if proc.returncode != 0:
        from ..errors import UserError

        why = proc.stderr.decode(errors="replace").strip().splitlines()
        raise UserError(f"ffmpeg failed to write {path.name}: {why[-1] if why else proc.returncode}")


def _grid_shape(n: int) -> tuple[int, int]:
    cols = int(np.ceil(np.sqrt(n)))
    return int(np.ceil(n / cols)), cols


def _frames(z: np.ndarray, stride: int) -> np.ndarray:
    """``[T, n]`` -> ``[F, n]``: a neuron is on in a frame if it spiked in any of its steps."""
    T = z.shape[0]
    F = -(-T // stride)
    pad = np.zeros((F * stride - T, z.shape[1]), dtype=bool)
    return np.concatenate([z, pad]).reshape(F, stride, -1).any(1)


def _target(path: Path) -> tuple[Path, str]:
    """Where to write and how (``gif`` or ``mp4``)."""
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return path, "gif"
    if suffix == ".mp4":
        if shutil.which("ffmpeg"):
            return path, "mp4"
        gif = path.with_suffix(".gif")
        print(f"neuroplastic: note: ffmpeg is not on the PATH, so no MP4; wrote a GIF instead: {gif}",
              file=sys.stderr)
        return gif, "gif"
    from ..errors import UserError

    raise UserError(f"animation file must end with .gif or .mp4, got {path.name}")


def animate_spikes(spikes: Mapping[str, np.ndarray] | np.ndarray, path: str | Path, fps: float | None = None,
                   dt: float | None = None, title: str | None = None, max_frames: int = 200,
                   dpi: int = 80) -> Path:
    """Write an animation of one sample's spikes (``{layer: [T, N]}`` or ``[T, N]``) to ``path``
    (``.gif``, or ``.mp4`` with ffmpeg) and return the path written (the ``.gif`` fallback when
    ffmpeg is missing). ``fps`` defaults to a few seconds per loop (2..20 frames/s); ``dt``
    (seconds) puts the clock in ms; at most ``max_frames`` frames."""
    from ..io import atomic_path

    if not isinstance(spikes, Mapping):
        spikes = {"spikes": spikes}
    layers = {}
    for k, v in spikes.items():
        z = np.asarray(v)
        z = z[:, None] if z.ndim == 1 else z.reshape(z.shape[0], -1) if z.ndim > 2 else z
        if z.size:
            layers[str(k)] = z != 0
    if not layers:
        raise NoData("no spikes to animate")
    T = max(z.shape[0] for z in layers.values())
    if any(z.shape[0] != T for z in layers.values()):
        raise ValueError("every layer needs the same number of time steps")
    out, kind = _target(Path(path))
    stride = max(1, -(-T // max(1, int(max_frames))))
    frames = {k: _frames(z, stride) for k, z in layers.items()}
    F = next(iter(frames.values())).shape[0]
    if fps is None:
        fps = float(np.clip(F / 6.0, 2.0, 20.0))
    scale, tlabel = time_axis(dt)
    unit = "ms" if dt is not None else ""

    names = list(layers)
    L = len(names)
    ncols = min(L, 4)
    nrows = -(-L // ncols)
    fig = new_figure(max(2.3 * ncols, 5.0), 2.5 * nrows + 1.9, facecolor="white")
    gs = fig.add_gridspec(nrows + 1, ncols, height_ratios=[2.5] * nrows + [1.3])
    from matplotlib import colormaps

    cmap = colormaps["inferno"].with_extremes(bad="white")
    images, grids = [], []
    for k, name in enumerate(names):
        ax = fig.add_subplot(gs[k // ncols, k % ncols])
        n = layers[name].shape[1]
        r, c = _grid_shape(n)
        grid = np.full(r * c, np.nan)
        grid[:n] = 0.0
        im = ax.imshow(grid.reshape(r, c), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name}\n{n} neurons", fontsize=9)
        ax.set_xlabel(f"{r} x {c} grid of neurons\nbright: spiking, red: recently", fontsize=7)
        images.append(im)
        grids.append(grid)
    axr = fig.add_subplot(gs[nrows, :])
    # the rate per frame (mean over the frame's steps), drawn at the frames' centres
    starts = np.arange(F) * stride
    counts = np.minimum(starts + stride, T) - starts
    tt = (starts + (counts - 1) / 2) * scale
    rates = {k: np.add.reduceat(z.mean(1), starts) / counts for k, z in layers.items()}
    for j, name in enumerate(names):
        axr.plot(tt, rates[name], linewidth=1.2, color=f"C{j % 10}", label=name,
                 drawstyle="steps-mid" if F <= 60 else "default")
    top = max(float(r.max()) for r in rates.values())
    axr.set_ylim(-0.04 * (top or 1), (top or 1) * 1.15)
    axr.set_xlim(-0.5 * scale, (T - 0.5) * scale)
    axr.set_xlabel(tlabel, fontsize=8)
    axr.set_ylabel("rate\n(spikes/step)", fontsize=8)
    axr.tick_params(labelsize=7)
    if L > 1:
        axr.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    cursor = axr.axvspan(-0.5 * scale, (stride - 0.5) * scale, color="tab:red", alpha=0.3, linewidth=0)
    fig.suptitle(title or "Spikes over time", fontsize=10, fontweight="bold")
    axr.set_title("population rate" + (f" (mean over {stride} steps)" if stride > 1 else "") + "; red band: now",
                  fontsize=8, loc="left")
    clock = axr.set_title("t = 0", loc="right", fontsize=8, family="monospace")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    # blitting: draw the still parts once, then only the changing artists on a copy per frame
    dynamic = [*images, cursor, clock]
    for art in dynamic:
        art.set_animated(True)
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()  # lays the figure out (constrained) once
    fig.set_layout_engine("none")
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    state = [np.zeros(z.shape[1]) for z in frames.values()]
    shots = []
    for f in range(F):
        for k, name in enumerate(names):
            state[k] = np.maximum(frames[name][f].astype(np.float64), state[k] * DECAY)
            g = grids[k]
            g[: state[k].size] = state[k]
            images[k].set_data(g.reshape(images[k].get_array().shape))
        a, b = f * stride, min((f + 1) * stride, T) - 1
        cursor.set_x((a - 0.5) * scale)
        cursor.set_width((b - a + 1) * scale)
        if unit:
            t0, t1 = a * scale, b * scale
            clock.set_text(f"t = {t0:g} {unit}" if a == b else f"t = {t0:g}-{t1:g} {unit}")
        else:
            clock.set_text(f"step {a}/{T - 1}" if a == b else f"steps {a}-{b}/{T - 1}")
        canvas.restore_region(background)
        for art in dynamic:
            fig.draw_artist(art)
        shots.append(np.array(canvas.buffer_rgba()))
    with atomic_path(out) as tmp:
        (_write_gif if kind == "gif" else _write_mp4)(shots, tmp, fps)
    return out


def animate_run(run: Run, path: str | Path, task: int | None = None, sample: int = 0, fps: float | None = None,
                max_frames: int = 200) -> Path:
    """Animate the spikes of fixed test sample ``sample`` (its input and every spiking layer)
    recorded after ``task`` (default: the last) by the run's probe; returns the file written."""
    i, spikes, _, _ = probe_spikes(run, task, sample)
    spikes = {("input (recorded)" if k == "input" else k): v for k, v in spikes.items()}
    return animate_spikes(spikes, path, fps=fps, dt=run_dt(run), max_frames=max_frames,
                          title=f"{run.label}: test sample {sample} after {task_label(run, i)}")
