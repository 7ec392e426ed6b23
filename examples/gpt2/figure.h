#pragma once

// A figure as a list of drawing operations in pixel coordinates (origin top
// left, y down), and its two renderers: SVG text (figure_svg.cpp) and a PNG
// drawn with cairo (figure_png.cpp). Whatever draws a picture describes it
// once, as a Figure; both files come from that description, so they cannot
// drift apart. The renderers share the style constants below.

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace flora::gpt2 {

struct Rgb {
  uint8_t r, g, b;
};

struct Point {
  double x, y;
};

/// The dash pattern of dashed lines: on, off (pixels).
inline constexpr double kDashOn = 6, kDashOff = 4;
/// Font of every label (fontconfig substitutes a sans-serif face if it is
/// missing; scripts/setup.sh installs fonts-dejavu-core).
inline constexpr const char* kFontFamily = "DejaVu Sans";

/// An open polyline, round joins, butt caps.
struct Polyline {
  std::vector<Point> points;
  Rgb color;
  double width = 1;
  double opacity = 1;
  bool dashed = false;
};

/// A filled circle.
struct Disc {
  Point centre;
  double radius;
  Rgb color;
};

enum class Anchor { start, middle, end };

/// One line of text; `at` is on its baseline, at the start, middle or end of
/// the text as `anchor` says. Vertical text reads upwards, rotated about `at`.
struct Label {
  Point at;
  std::string text;
  Rgb color;
  Anchor anchor = Anchor::start;
  bool vertical = false;
  double size = 12;
};

using Shape = std::variant<Polyline, Disc, Label>;

/// Shapes in drawing order (later ones on top) on a white page.
struct Figure {
  int width = 0;
  int height = 0;
  std::vector<Shape> shapes;
};

/// The SVG document of the figure.
std::string render_svg(const Figure& figure);

/// True when this build has cairo, which render_png needs.
bool png_rendering_available();
/// The PNG file of the figure, width x height pixels, drawn by cairo
/// (anti-aliased). Throws c10::Error without cairo or if cairo fails.
std::string render_png(const Figure& figure);

} // namespace flora::gpt2
