#include "plot.h"

#include "file_io.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

#ifdef FLORA_GPT2_HAVE_PNG
#include <png.h>
#endif

namespace flora::gpt2 {
namespace {

// ---- geometry shared by both renderers --------------------------------------

constexpr int kWidth = 880;
constexpr int kHeight = 540;
constexpr double kLeft = 70, kRight = 190, kTop = 40, kBottom = 60; // margins
constexpr int kSmoothing = 10;

struct Color {
  unsigned char r, g, b;
};
constexpr Color kPalette[] = {{31, 119, 180}, {214, 39, 40}, {44, 160, 44}, {148, 103, 189}, {255, 127, 14}};
constexpr Color kBlack = {0, 0, 0};
constexpr Color kGrid = {225, 225, 225};
constexpr Color kText = {40, 40, 40};

struct Point {
  double x, y;
};

struct Series {
  std::string name;
  Color color;
  std::vector<Point> raw;      // (step, train loss)
  std::vector<Point> smoothed; // moving average
  std::vector<Point> eval;     // (step, eval loss)
};

struct Axis {
  double lo, hi, tick;
};

// Ticks at multiples of 1, 2 or 5 x 10^k, about `target` of them.
Axis nice_axis(double lo, double hi, int target, bool from_zero) {
  if (!(hi > lo)) {
    hi = lo + 1;
  }
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double tick = mag;
  for (const double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * mag >= raw) {
      tick = m * mag;
      break;
    }
  }
  Axis a;
  a.tick = tick;
  a.lo = from_zero ? 0.0 : std::floor(lo / tick) * tick;
  a.hi = std::ceil(hi / tick) * tick;
  return a;
}

std::string tick_label(double v, double tick) {
  char buffer[32];
  const int decimals = tick >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(tick) - 1e-9));
  std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, v);
  return buffer;
}

struct Plot {
  std::vector<Series> series;
  Axis x, y;

  double px(double step) const {
    return kLeft + (step - x.lo) / (x.hi - x.lo) * (kWidth - kLeft - kRight);
  }
  double py(double loss) const {
    return kTop + (y.hi - loss) / (y.hi - y.lo) * (kHeight - kTop - kBottom);
  }
};

Plot make_plot(const std::vector<RunResult>& runs) {
  Plot plot;
  double max_step = 1, lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto& r = runs[i];
    Series s;
    s.name = r.name;
    s.color = kPalette[i % (sizeof(kPalette) / sizeof(kPalette[0]))];
    s.eval.push_back({0.0, r.initial_eval_loss});
    for (size_t k = 0; k < r.records.size(); ++k) {
      const auto& rec = r.records[k];
      s.raw.push_back({static_cast<double>(rec.step), rec.train_loss});
      // A centred moving average (shorter at the ends), so the curve does not lag.
      const size_t lo_k = k >= kSmoothing / 2 ? k - kSmoothing / 2 : 0;
      const size_t hi_k = std::min(r.records.size(), k + kSmoothing / 2 + 1);
      double sum = 0;
      for (size_t j = lo_k; j < hi_k; ++j) {
        sum += r.records[j].train_loss;
      }
      s.smoothed.push_back({static_cast<double>(rec.step), sum / static_cast<double>(hi_k - lo_k)});
      if (!std::isnan(rec.eval_loss)) {
        s.eval.push_back({static_cast<double>(rec.step), rec.eval_loss});
      }
      max_step = std::max(max_step, static_cast<double>(rec.step));
    }
    for (const auto* pts : {&s.raw, &s.eval}) {
      for (const auto& p : *pts) {
        if (std::isfinite(p.y)) {
          lo = std::min(lo, p.y);
          hi = std::max(hi, p.y);
        }
      }
    }
    plot.series.push_back(std::move(s));
  }
  if (!std::isfinite(lo)) {
    lo = 0, hi = 1;
  }
  plot.x = nice_axis(0, max_step, 8, true);
  plot.y = nice_axis(lo, hi, 8, false);
  return plot;
}

// ---- renderers ---------------------------------------------------------------

class Canvas {
 public:
  virtual ~Canvas() = default;
  virtual void polyline(const std::vector<Point>& pts, Color c, double width, double opacity, bool dashed) = 0;
  virtual void circle(double x, double y, double r, Color c) = 0;
  /// anchor: 0 left, 1 middle, 2 right; (x, y) is the text's baseline-ish middle.
  virtual void text(double x, double y, const std::string& s, Color c, int anchor, bool vertical = false) = 0;
};

void draw(const Plot& plot, Canvas& canvas) {
  const double x0 = kLeft, x1 = kWidth - kRight, y0 = kTop, y1 = kHeight - kBottom;
  // Grid and ticks.
  for (double v = plot.x.lo; v <= plot.x.hi + 1e-9 * plot.x.tick; v += plot.x.tick) {
    const double x = plot.px(v);
    canvas.polyline({{x, y0}, {x, y1}}, kGrid, 1, 1, false);
    canvas.polyline({{x, y1}, {x, y1 + 5}}, kBlack, 1, 1, false);
    canvas.text(x, y1 + 18, tick_label(v, plot.x.tick), kText, 1);
  }
  for (double v = plot.y.lo; v <= plot.y.hi + 1e-9 * plot.y.tick; v += plot.y.tick) {
    const double y = plot.py(v);
    canvas.polyline({{x0, y}, {x1, y}}, kGrid, 1, 1, false);
    canvas.polyline({{x0 - 5, y}, {x0, y}}, kBlack, 1, 1, false);
    canvas.text(x0 - 8, y, tick_label(v, plot.y.tick), kText, 2);
  }
  // Axes.
  canvas.polyline({{x0, y0}, {x0, y1}, {x1, y1}}, kBlack, 1.5, 1, false);
  canvas.text((x0 + x1) / 2, kHeight - 18, "step", kText, 1);
  canvas.text(20, (y0 + y1) / 2, "loss (nats/token)", kText, 1, true);
  canvas.text((x0 + x1) / 2, 20, "gpt-2 fine-tune: training and held-out loss", kText, 1);
  // Curves.
  auto to_px = [&](const std::vector<Point>& pts) {
    std::vector<Point> out;
    out.reserve(pts.size());
    for (const auto& p : pts) {
      out.push_back({plot.px(p.x), plot.py(p.y)});
    }
    return out;
  };
  for (const auto& s : plot.series) {
    canvas.polyline(to_px(s.raw), s.color, 1, 0.25, false);
  }
  for (const auto& s : plot.series) {
    canvas.polyline(to_px(s.smoothed), s.color, 2, 1, false);
    const auto eval = to_px(s.eval);
    canvas.polyline(eval, s.color, 2, 1, true);
    for (const auto& p : eval) {
      canvas.circle(p.x, p.y, 3.5, s.color);
    }
  }
  // Legend.
  double ly = y0 + 10;
  const double lx = x1 + 15;
  for (const auto& s : plot.series) {
    canvas.polyline({{lx, ly}, {lx + 30, ly}}, s.color, 2, 1, false);
    canvas.text(lx + 38, ly, s.name + " train", kText, 0);
    ly += 20;
    canvas.polyline({{lx, ly}, {lx + 30, ly}}, s.color, 2, 1, true);
    canvas.circle(lx + 15, ly, 3.5, s.color);
    canvas.text(lx + 38, ly, s.name + " eval", kText, 0);
    ly += 28;
  }
  canvas.text(lx, ly, "train: faint per step,", kText, 0);
  canvas.text(lx, ly + 14, "solid " + std::to_string(kSmoothing + 1) + "-step centred mean", kText, 0);
}

std::string hex(Color c) {
  char buffer[8];
  std::snprintf(buffer, sizeof(buffer), "#%02x%02x%02x", c.r, c.g, c.b);
  return buffer;
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

class SvgCanvas : public Canvas {
 public:
  std::ostringstream out;

  SvgCanvas() {
    out << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << kHeight
        << "\" viewBox=\"0 0 " << kWidth << ' ' << kHeight << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
        << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  }
  void polyline(const std::vector<Point>& pts, Color c, double width, double opacity, bool dashed) override {
    if (pts.empty()) {
      return;
    }
    out << "<polyline fill=\"none\" stroke=\"" << hex(c) << "\" stroke-width=\"" << width << '"';
    if (opacity < 1) {
      out << " stroke-opacity=\"" << opacity << '"';
    }
    if (dashed) {
      out << " stroke-dasharray=\"6 4\"";
    }
    out << " points=\"";
    char buffer[48];
    for (const auto& p : pts) {
      std::snprintf(buffer, sizeof(buffer), "%.1f,%.1f ", p.x, p.y);
      out << buffer;
    }
    out << "\"/>\n";
  }
  void circle(double x, double y, double r, Color c) override {
    char buffer[128];
    std::snprintf(buffer, sizeof(buffer), "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"%s\"/>\n", x, y, r,
                  hex(c).c_str());
    out << buffer;
  }
  void text(double x, double y, const std::string& s, Color c, int anchor, bool vertical) override {
    static const char* const anchors[] = {"start", "middle", "end"};
    char buffer[160];
    std::snprintf(buffer, sizeof(buffer), "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\" text-anchor=\"%s\"", x, y + 4,
                  hex(c).c_str(), anchors[anchor]);
    out << buffer;
    if (vertical) {
      std::snprintf(buffer, sizeof(buffer), " transform=\"rotate(-90 %.1f %.1f)\"", x, y + 4);
      out << buffer;
    }
    out << '>' << xml_escape(s) << "</text>\n";
  }
  std::string finish() {
    out << "</svg>\n";
    return out.str();
  }
};

// A 5x7 pixel font: lower-case letters, digits and a little punctuation
// (upper case is drawn as lower case; other characters as blanks).
struct Glyph {
  char c;
  const char* rows[7];
};
constexpr Glyph kFont[] = {
    {'0', {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."}},
    {'1', {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'2', {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"}},
    {'3', {"#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."}},
    {'4', {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."}},
    {'5', {"#####", "#....", "####.", "....#", "....#", "#...#", ".###."}},
    {'6', {"..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."}},
    {'7', {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."}},
    {'8', {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."}},
    {'9', {".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."}},
    {'.', {".....", ".....", ".....", ".....", ".....", ".##..", ".##.."}},
    {'-', {".....", ".....", ".....", "#####", ".....", ".....", "....."}},
    {'+', {".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."}},
    {'(', {"...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."}},
    {')', {".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."}},
    {',', {".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."}},
    {'=', {".....", ".....", "#####", ".....", "#####", ".....", "....."}},
    {':', {".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."}},
    {'/', {".....", "....#", "...#.", "..#..", ".#...", "#....", "....."}},
    {'_', {".....", ".....", ".....", ".....", ".....", ".....", "#####"}},
    {'a', {".....", ".....", ".###.", "....#", ".####", "#...#", ".####"}},
    {'b', {"#....", "#....", "#.##.", "##..#", "#...#", "#...#", "####."}},
    {'c', {".....", ".....", ".###.", "#....", "#....", "#...#", ".###."}},
    {'d', {"....#", "....#", ".##.#", "#..##", "#...#", "#...#", ".####"}},
    {'e', {".....", ".....", ".###.", "#...#", "#####", "#....", ".###."}},
    {'f', {"..##.", ".#..#", ".#...", "###..", ".#...", ".#...", ".#..."}},
    {'g', {".....", ".####", "#...#", "#...#", ".####", "....#", ".###."}},
    {'h', {"#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#"}},
    {'i', {"..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###."}},
    {'j', {"...#.", ".....", "..##.", "...#.", "...#.", "#..#.", ".##.."}},
    {'k', {"#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#."}},
    {'l', {".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."}},
    {'m', {".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#"}},
    {'n', {".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#"}},
    {'o', {".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###."}},
    {'p', {".....", ".....", "####.", "#...#", "####.", "#....", "#...."}},
    {'q', {".....", ".....", ".##.#", "#..##", ".####", "....#", "....#"}},
    {'r', {".....", ".....", "#.##.", "##..#", "#....", "#....", "#...."}},
    {'s', {".....", ".....", ".###.", "#....", ".###.", "....#", "####."}},
    {'t', {".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##."}},
    {'u', {".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#"}},
    {'v', {".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#.."}},
    {'w', {".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#."}},
    {'x', {".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"}},
    {'y', {".....", ".....", "#...#", "#...#", ".####", "....#", ".###."}},
    {'z', {".....", ".....", "#####", "...#.", "..#..", ".#...", "#####"}},
};

const Glyph* glyph(char c) {
  c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const auto& g : kFont) {
    if (g.c == c) {
      return &g;
    }
  }
  return nullptr;
}

class RasterCanvas : public Canvas {
 public:
  std::vector<unsigned char> rgb = std::vector<unsigned char>(static_cast<size_t>(kWidth) * kHeight * 3, 255);

  void blend(int x, int y, Color c, double alpha) {
    if (x < 0 || y < 0 || x >= kWidth || y >= kHeight || alpha <= 0) {
      return;
    }
    alpha = std::min(alpha, 1.0);
    unsigned char* p = &rgb[(static_cast<size_t>(y) * kWidth + x) * 3];
    const unsigned char src[3] = {c.r, c.g, c.b};
    for (int k = 0; k < 3; ++k) {
      p[k] = static_cast<unsigned char>(std::lround(p[k] * (1 - alpha) + src[k] * alpha));
    }
  }

  // An anti-aliased segment of the given width: coverage from the distance
  // of each nearby pixel centre to the segment.
  void segment(Point a, Point b, Color c, double width, double opacity) {
    const double half = width / 2;
    const int xmin = static_cast<int>(std::floor(std::min(a.x, b.x) - half - 1));
    const int xmax = static_cast<int>(std::ceil(std::max(a.x, b.x) + half + 1));
    const int ymin = static_cast<int>(std::floor(std::min(a.y, b.y) - half - 1));
    const int ymax = static_cast<int>(std::ceil(std::max(a.y, b.y) + half + 1));
    const double dx = b.x - a.x, dy = b.y - a.y, len2 = dx * dx + dy * dy;
    for (int y = std::max(ymin, 0); y <= std::min(ymax, kHeight - 1); ++y) {
      for (int x = std::max(xmin, 0); x <= std::min(xmax, kWidth - 1); ++x) {
        const double cx = x + 0.5, cy = y + 0.5;
        double t = len2 > 0 ? ((cx - a.x) * dx + (cy - a.y) * dy) / len2 : 0;
        t = std::clamp(t, 0.0, 1.0);
        const double ex = a.x + t * dx - cx, ey = a.y + t * dy - cy;
        const double coverage = std::clamp(half + 0.5 - std::sqrt(ex * ex + ey * ey), 0.0, 1.0);
        if (coverage > 0) {
          // max-blend within one segment would be better; overlapping joints
          // of consecutive segments darken slightly, which is invisible here.
          blend(x, y, c, coverage * opacity);
        }
      }
    }
  }

  void polyline(const std::vector<Point>& pts, Color c, double width, double opacity, bool dashed) override {
    double carried = 0; // dash phase along the line
    for (size_t i = 1; i < pts.size(); ++i) {
      Point a = pts[i - 1], b = pts[i];
      if (!dashed) {
        segment(a, b, c, width, opacity);
        continue;
      }
      const double len = std::hypot(b.x - a.x, b.y - a.y);
      double s = 0;
      while (s < len) {
        const double phase = std::fmod(carried + s, 10.0);
        const bool on = phase < 6.0;
        const double step = std::min(len - s, on ? 6.0 - phase : 10.0 - phase);
        if (on && len > 0) {
          const Point p{a.x + (b.x - a.x) * s / len, a.y + (b.y - a.y) * s / len};
          const Point q{a.x + (b.x - a.x) * (s + step) / len, a.y + (b.y - a.y) * (s + step) / len};
          segment(p, q, c, width, opacity);
        }
        s += std::max(step, 1e-6);
      }
      carried = std::fmod(carried + len, 10.0);
    }
  }

  void circle(double x, double y, double r, Color c) override {
    for (int py = static_cast<int>(y - r - 1); py <= static_cast<int>(y + r + 1); ++py) {
      for (int px = static_cast<int>(x - r - 1); px <= static_cast<int>(x + r + 1); ++px) {
        const double d = std::hypot(px + 0.5 - x, py + 0.5 - y);
        blend(px, py, c, std::clamp(r + 0.5 - d, 0.0, 1.0));
      }
    }
  }

  void text(double x, double y, const std::string& s, Color c, int anchor, bool vertical) override {
    const int advance = 6; // 5 columns + 1 space
    const double length = static_cast<double>(s.size()) * advance - 1;
    const double start = anchor == 0 ? 0 : anchor == 1 ? -length / 2 : -length;
    for (size_t i = 0; i < s.size(); ++i) {
      const Glyph* g = glyph(s[i]);
      if (g == nullptr) {
        continue;
      }
      for (int row = 0; row < 7; ++row) {
        for (int col = 0; col < 5; ++col) {
          if (g->rows[row][col] != '#') {
            continue;
          }
          const double along = start + static_cast<double>(i) * advance + col;
          const double across = row - 3.5;
          if (vertical) {
            blend(static_cast<int>(std::lround(x + across)), static_cast<int>(std::lround(y - along)), c, 1);
          } else {
            blend(static_cast<int>(std::lround(x + along)), static_cast<int>(std::lround(y + across)), c, 1);
          }
        }
      }
    }
  }
};

} // namespace

std::string loss_svg(const std::vector<RunResult>& runs) {
  SvgCanvas canvas;
  draw(make_plot(runs), canvas);
  return canvas.finish();
}

void write_loss_svg(const std::string& path, const std::vector<RunResult>& runs) {
  write_file_atomic(path, loss_svg(runs));
}

bool png_supported() {
#ifdef FLORA_GPT2_HAVE_PNG
  return true;
#else
  return false;
#endif
}

void write_loss_png(const std::string& path, const std::vector<RunResult>& runs) {
#ifdef FLORA_GPT2_HAVE_PNG
  RasterCanvas canvas;
  draw(make_plot(runs), canvas);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  TORCH_CHECK(png != nullptr, "libpng: png_create_write_struct failed");
  png_infop info = png_create_info_struct(png);
  std::string bytes;
  if (info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    TORCH_CHECK(false, "libpng failed to encode '", path, "'");
  }
  png_set_write_fn(
      png, &bytes,
      [](png_structp p, png_bytep data, png_size_t n) {
        static_cast<std::string*>(png_get_io_ptr(p))->append(reinterpret_cast<const char*>(data), n);
      },
      [](png_structp) {});
  png_set_IHDR(png, info, kWidth, kHeight, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < kHeight; ++y) {
    png_write_row(png, &canvas.rgb[static_cast<size_t>(y) * kWidth * 3]);
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  write_file_atomic(path, bytes);
#else
  TORCH_CHECK(false, "this build has no libpng: cannot write '", path, "'");
#endif
}

} // namespace flora::gpt2
