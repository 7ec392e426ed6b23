#pragma once

// The loss-curve picture of a comparison: for each optimizer, its training
// loss (a faint line per step and a solid 11-step centred mean) and its
// held-out loss (dashed, with markers, including the initial evaluation at
// step 0), with axes, ticks, grid and a legend.
//
// loss_figure() lays the picture out once (figure.h); loss.svg and loss.png
// are that one description rendered as SVG text and by cairo.

#include "figure.h"
#include "train.h"

#include <string>
#include <vector>

namespace flora::gpt2 {

/// The picture, 880 x 540 pixels.
Figure loss_figure(const std::vector<RunResult>& runs);

/// Writes render_svg(loss_figure(runs)) to `path` (atomically).
void write_loss_svg(const std::string& path, const std::vector<RunResult>& runs);
/// True when this build can write PNG (it found cairo).
bool png_supported();
/// Writes render_png(loss_figure(runs)) to `path` (atomically); throws if
/// !png_supported().
void write_loss_png(const std::string& path, const std::vector<RunResult>& runs);

} // namespace flora::gpt2
