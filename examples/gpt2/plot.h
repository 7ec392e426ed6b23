#pragma once

// The loss-curve picture of a comparison: for each optimizer, its training
// loss (a faint line per step and a solid 11-step centred mean) and its
// held-out loss (dashed, with markers, including the initial evaluation at
// step 0), with axes, ticks, grid and a legend.
//
// loss.svg is written by hand; loss.png is the same picture rasterised here
// (anti-aliased lines, a built-in 5x7 pixel font) and encoded with libpng.

#include "train.h"

#include <string>
#include <vector>

namespace flora::gpt2 {

/// The SVG document.
std::string loss_svg(const std::vector<RunResult>& runs);
/// Writes loss_svg() to `path` (atomically).
void write_loss_svg(const std::string& path, const std::vector<RunResult>& runs);
/// True when this build can write PNG (it found libpng).
bool png_supported();
/// Writes the PNG to `path` (atomically); throws if !png_supported().
void write_loss_png(const std::string& path, const std::vector<RunResult>& runs);

} // namespace flora::gpt2
