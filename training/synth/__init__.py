"""Synthetic two-photon stacks of spiny dendrites, with ground-truth spine boxes.

No public 3D spine stack with labels exists, so training and tests use these.
They imitate in-vivo two-photon images like the paper's (Vogel et al.):
bright, often saturated dendritic shafts meandering through the volume and
drifting in depth; spines on them (stubby, thin, mushroom: a head on a faint
neck), some tilted out of the image plane; things that are *not* spines (thin
axons with boutons, bright puncta, out-of-focus haze); an anisotropic point
spread function (PSF); Poisson photon noise plus read noise; intensity that
falls with depth; 8- or 16-bit output, often saturated.

Everything is placed and rendered in physical units (µm), so pixel size and
z-step change the image consistently.  Coordinates are ``(z, y, x)`` in µm:
slice ``k`` lies at ``z = k * z_step``, pixel ``(row i, column j)`` covers
``[i, i + 1) * pixel_size`` in y and ``[j, j + 1) * pixel_size`` in x, so a
box edge at pixel coordinate ``c`` is at ``c * pixel_size`` µm.

How an image is made (one module per step)
    :mod:`.params`  the settings, drawn per stack (:class:`SynthParams`);
    :mod:`.grid`    the sampling: slices, pixels, fine z grid, PSF widths;
    :mod:`.scene`   the objects in µm: dendrites, spines, axons, boutons,
                    puncta, haze paths;
    :mod:`.render`  every object drawn sharp into a volume sampled finely in
                    z, then blurred by the Gaussian PSF and read out at the
                    slices (noise-free dye units);
    :mod:`.camera`  expected photons = depth attenuation * (signal photons *
                    dye + background and haze); Poisson photons, read noise,
                    gain, offset, 8 or 16 bit;
    :mod:`.truth`   the ground truth: the visibility rule that says in which
                    slices a spine is boxed, and how (read it there);
    :mod:`.stack`   :func:`make_stack` putting these together (:class:`SynthStack`);
    :mod:`.files`   the TIFF and ``_boxes.csv`` of a stack;
    :mod:`.cli`     the command ``spine-synth``.

In short, a spine is boxed in a slice when its head, rendered alone, is
within its axial blur there, stands 3 noise SDs above the slice's
background and is not outshone by its shaft; the box outlines head (and
neck) at 1/4 of their in-slice peaks.  Spines never visible get no rows, so
the table may name fewer spines than the scene holds.  Axons, boutons,
puncta and haze never get boxes.

Typical use::

    stack = make_stack(seed=1, shape=(30, 512, 512))
    stack.image[z], stack.boxes_at(z)          # a training slice and its boxes
    write_stack(stack, "out", "synth_000")     # out/synth_000.tif + _boxes.csv

The generator needs numpy and tifffile only (no torch); the command adds typer.
"""

from .files import tiff_bytes, write_stack
from .grid import Grid
from .params import SynthParams
from .render import render_alone, render_dye
from .scene import SPINE_KINDS, Ball, Scene, Spine, Tube, make_scene
from .stack import SynthStack, make_stack
from .truth import distractor_boxes

__all__ = ["SPINE_KINDS", "Ball", "Grid", "Scene", "Spine", "SynthParams", "SynthStack", "Tube",
           "distractor_boxes", "main", "make_scene", "make_stack", "render_alone", "render_dye", "tiff_bytes",
           "write_stack"]


def main() -> None:
    """Entry point of ``spine-synth`` (:mod:`.cli`); imported on use, so the generator does not load the command."""
    from .cli import main as cli_main

    cli_main()
